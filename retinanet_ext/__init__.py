"""RetinaNet ("Focal Loss for Dense Object Detection") as Detectron2 components.

``import retinanet_ext`` applies the Detectron2 compatibility bridges
(:mod:`retinanet_ext.compat`) and registers every component of the package into
Detectron2's registries; nothing else is needed before building a model from a config.
"""

from retinanet_ext import compat

compat.apply()

import retinanet_ext.modeling  # noqa: E402, F401  (registers the model components)
from retinanet_ext.config import add_retinanet_ext_config, get_retinanet_ext_cfg  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Predictor", "add_retinanet_ext_config", "get_retinanet_ext_cfg", "compat",
           "__version__"]


def __getattr__(name: str):
    # Predictor is imported on first use, so `import retinanet_ext` stays light.
    if name == "Predictor":
        from retinanet_ext.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'retinanet_ext' has no attribute {name!r}")
