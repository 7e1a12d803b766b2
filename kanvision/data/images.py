"""Image files as the 8-bit RGB the models were trained on, converted by what their pixel values mean.

PIL's own `img.convert("RGB")` is right for 8-bit files, but clips wider ones: a 16-bit grayscale PNG
(mode "I;16") comes out white wherever a value exceeds 255, which is almost everywhere, and a float image
("F", values 0..1) comes out black. A transparent pixel's colour is whatever the file stored under it
(often black). `to_rgb` converts every mode by its meaning instead, and refuses what has no single meaning:

    1, L, P, RGB, RGBX, YCbCr, HSV  PIL's conversion (exact for these)
    CMYK                            PIL's conversion (naive: no colour profile is applied)
    I;16, I;16L, I;16B, I;16N       16-bit samples, 0..65535 -> 0..255 (rounded to nearest)
    I (32-bit integer)              read as 16-bit when every value lies in 0..65535, else refused
    F (32-bit float)                values in [0, 1] -> x 255; values in [0, 255] -> as 8-bit; else refused
    LA, PA, RGBA, La, RGBa, and     alpha composited on a white background (the page colour most
    any mode with a transparent     viewers show transparent pixels on): what a person looking at the
    colour (PNG tRNS, GIF)          image saw, rather than the hidden colour under transparent pixels
    LAB and other modes             refused by name (PIL's LAB -> RGB is not colorimetric)

A refusal is an ImageModeError (a ValueError) whose message is one line naming the file, its mode and why.
`open_rgb` is the loader for torchvision's ImageFolder (module level: picklable for DataLoader workers).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["ImageModeError", "mode_problem", "open_rgb", "to_rgb", "unreadable_reason"]

_AS_IS = frozenset({"1", "L", "P", "RGB", "RGBX", "YCbCr", "HSV", "CMYK"})
_ALPHA = frozenset({"LA", "PA", "RGBA", "La", "RGBa"})
_SIXTEEN = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageModeError(ValueError):
    """An image whose pixel values cannot be read as RGB without guessing; the message names the file and mode."""


def _who(img: Image.Image, path) -> str:
    """"<file>: <mode> image"; just "<mode> image" when path is "" (the caller names the file itself)."""
    if path == "":
        return f"{img.mode} image"
    name = path if path is not None else getattr(img, "filename", "") or "image"
    return f"{name}: {img.mode} image"


def _range_problem(img: Image.Image, path) -> tuple[str | None, np.ndarray | None]:
    """(why `img` cannot be read, None) or (None, its values as float64) for the "I" and "F" modes."""
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        return f"{_who(img, path)} holds NaN or infinite values: save it with finite values", None
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "I" and not (lo >= 0 and hi <= 65535):
        return (f"{_who(img, path)} (32-bit integer) with values {lo:g}..{hi:g}: outside 0..65535 its white point is "
                "unknown; save it as an 8 or 16-bit image"), None
    if img.mode == "F" and not (lo >= 0 and hi <= 255):
        return (f"{_who(img, path)} (32-bit float) with values {lo:g}..{hi:g}: kanvision reads float images as 0..1 "
                "or 0..255 and cannot tell this one's white point; rescale it or save it as an 8 or 16-bit image"), None
    return None, values


def mode_problem(img: Image.Image, path=None) -> str | None:
    """Why `to_rgb` would refuse `img` (one line naming it: `path`, else its filename; path="" names only the
    mode), or None. Reads pixels only for "I" and "F"."""
    if img.mode in _AS_IS or img.mode in _ALPHA or img.mode in _SIXTEEN:
        return None
    if img.mode in ("I", "F"):
        return _range_problem(img, path)[0]
    return (f"{_who(img, path)}: not read: kanvision reads 1, L, P, RGB, RGBA, LA, CMYK, YCbCr, HSV, 16-bit (I;16) and "
            f"float (F) images; convert this one to RGB first")


def _composite_on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("La", "RGBa"):  # premultiplied: PIL converts these to straight alpha only within their family
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    # v * 255 / 65535 rounded to nearest, in integers: 65535 -> 255, 257 * k -> k exactly.
    v = values.astype(np.int64)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image, path=None) -> Image.Image:
    """`img` as 8-bit RGB, converted by what its values mean (module docstring); ImageModeError if it cannot."""
    mode = img.mode
    if mode in _ALPHA or (mode in ("L", "P", "RGB", "1") and "transparency" in img.info):
        return _composite_on_white(img)
    if mode in _AS_IS:
        return img.convert("RGB")
    if mode in _SIXTEEN:
        return Image.fromarray(_sixteen_to_eight(np.asarray(img))).convert("RGB")
    problem = mode_problem(img, path)
    if problem:
        raise ImageModeError(problem)
    _, values = _range_problem(img, path)
    if mode == "I":
        return Image.fromarray(_sixteen_to_eight(values)).convert("RGB")
    scale = 255.0 if values.size and values.max() <= 1 else 1.0  # "F": 0..1 (the usual float convention) or 0..255
    return Image.fromarray(np.rint(values * scale).astype(np.uint8)).convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The file at `path` as 8-bit RGB (to_rgb); the ImageFolder loader of kanvision's data and `predict`."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, path)


def unreadable_reason(path: str) -> str | None:
    """Why an image file cannot be used (empty, not an image, truncated, a pixel mode to_rgb refuses), or None;
    fast: no full decode unless a JPEG does not end with its end-of-image marker, or the mode is 32-bit integer
    or float (whose value range decides how they are read)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as img:
            if img.mode not in ("I", "F"):  # these two need their pixels: checked after verify() below
                problem = mode_problem(img, "")  # the warning that lists bad files names the file
                if problem:
                    return problem
            if img.format == "JPEG":
                with open(path, "rb") as f:
                    f.seek(-2, os.SEEK_END)
                    if f.read(2) != b"\xff\xd9":
                        img.load()  # bytes after the end marker are legal: only a decode tells truncation
            else:
                img.verify()  # PNG: chunk checksums; other formats: the header
            ranged = img.mode in ("I", "F")
        if ranged:
            with Image.open(path) as img:  # verify() leaves the image unusable: open it again to decode
                img.load()
                problem = mode_problem(img, "")
                if problem:
                    return problem
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error...) for bad files
        return f"{type(e).__name__}: {str(e)[:80]}" if str(e) else type(e).__name__
    return None
