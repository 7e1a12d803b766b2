"""The model zoo: importing this registers every `kan_*` model with timm.

    timm.create_model("kan_deit_tiny_patch4_32", kan="bspline", num_classes=100)
"""
from kanvision.models import kan_convmixer, kan_deit, kan_mixer  # noqa: F401  (registration side effect)
from kanvision.models._factory import KanSpec, checkpoint_filter_fn, count_parameters, kan_modules  # noqa: F401

__all__ = ["KanSpec", "checkpoint_filter_fn", "count_parameters", "kan_modules", "list_zoo"]


def list_zoo() -> list[str]:
    import timm
    return timm.list_models("kan_*")
