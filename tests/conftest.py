"""Fixtures several test files share.

- `tiny_model(name, kind, **kw)`: a zoo model with one block (num_blocks=1 / depth=1), built through timm.
- `write_config(tmp_path, **over)`: a `kanvision fit --config` YAML for a one-block B-spline Mixer on synthetic
  images on the CPU (FIT_CONFIG), `section__key=value` overriding a key; returns the file's path.
- `saved_floats(layer, x)`: floats autograd keeps for the backward of `layer(x)` (parameters not counted), the
  quantity a kind's `memory` model predicts per row.
- KAN kernels run eager in the suite (KANVISION_COMPILE=0, set below before kanvision is imported, and inherited
  by the CLI subprocesses). Inductor compiles each kernel variant with the C++ compiler on first use: about 240
  variants, which took the fast suite from 4 to 10.5 minutes on a fresh 2-core machine (cold compile cache).
  The compiled kernels are checked where compilation is the subject: those tests take the `compiled_kernels`
  fixture (the automatic choice back on for that test). A test that asks a layer for compile=True without it
  fails: the "asked to compile ... run eager" warning is an error in the suite (pyproject filterwarnings).
  `KANVISION_COMPILE=1 pytest` runs the whole suite with compiled kernels, as a user's CPU run has them.
"""
import os

import pytest
import yaml

os.environ.setdefault("KANVISION_COMPILE", "0")

FIT_CONFIG = {
    "model": {"model": "kan_mixer_tiny_p4_32", "kan": "bspline", "model_kwargs": {"num_blocks": 1}},
    "data": {"dataset": "synthetic", "batch_size": 16, "num_workers": 0, "synthetic_size": 64, "augment": "none"},
    "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                "accelerator": "cpu", "devices": 1},
}
# The keyword that makes each zoo family one block deep (timm's own names for it).
ONE_BLOCK = {"kan_mixer": {"num_blocks": 1}, "kan_convmixer": {"depth": 1}, "kan_deit": {"depth": 1}}


def one_block(name: str) -> dict:
    family = next((f for f in ONE_BLOCK if name.startswith(f + "_")), None)
    if family is None:
        raise ValueError(f"name must be a kanvision zoo model ({', '.join(f + '_*' for f in ONE_BLOCK)}), got {name!r}")
    return dict(ONE_BLOCK[family])


@pytest.fixture(scope="session")
def tiny_model():
    import timm

    import kanvision  # noqa: F401  (registers the zoo with timm)

    def build(name: str = "kan_mixer_tiny_p4_32", kind: str = "bspline", **kw):
        return timm.create_model(name, kan=kind, **{**one_block(name), **kw})

    return build


@pytest.fixture(scope="session")  # a pure function: module-scoped fixtures (test_cli.py) use it too
def write_config():
    def write(tmp_path, **over):
        cfg = {k: dict(v) for k, v in FIT_CONFIG.items()}
        for key, value in over.items():
            section, name = key.split("__")
            cfg[section][name] = value
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    return write


@pytest.fixture(scope="session")
def saved_floats():
    import torch

    def count(layer, x):
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes() // t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(x)
        y.sum().backward()
        return sum(seen.values())

    return count


@pytest.fixture
def compiled_kernels(monkeypatch):
    """The KAN kernels compiled where they can be (the product's default, KANVISION_COMPILE unset) for one test."""
    from kanvision.kinds.compile import compile_supported

    monkeypatch.delenv("KANVISION_COMPILE", raising=False)
    compile_supported.cache_clear()
    yield
    monkeypatch.undo()
    compile_supported.cache_clear()


@pytest.fixture(autouse=True)
def _each_refused_compile_warns():
    """kinds/compile.py warns once per process about a compile=True it cannot honour; in the suite, once per test,
    so the filterwarnings error above catches every test that asks for compiled kernels without the fixture."""
    yield
    from kanvision.kinds import compile as kcompile

    kcompile._TOLD.clear()
