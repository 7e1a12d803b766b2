"""kanvision: KAN channel mixers for timm vision models.

Importing the package registers the model zoo with timm, so `timm.create_model("kan_...")` works.
"""
__version__ = "0.1.0"

from kanvision import layers, models  # noqa: F401  (models: registers the zoo with timm)
from kanvision.hub.checkpoints import CheckpointError, load_pretrained  # noqa: F401
from kanvision.layers import BSplineKAN, KanMlp, RSWAFKAN, kan_mlp_layer  # noqa: F401
from kanvision.models import count_parameters  # noqa: F401
