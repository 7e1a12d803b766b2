"""Fixtures several test files share.

- `tiny_model(name, kind, **kw)`: a zoo model with one block (num_blocks=1 / depth=1), built through timm.
- `write_config(tmp_path, **over)`: a `kanvision fit --config` YAML for a one-block B-spline Mixer on synthetic
  images on the CPU (FIT_CONFIG), `section__key=value` overriding a key; returns the file's path.
- `saved_floats(layer, x)`: floats autograd keeps for the backward of `layer(x)` (parameters not counted), the
  quantity a kind's `memory` model predicts per row.
"""
import pytest
import yaml

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
