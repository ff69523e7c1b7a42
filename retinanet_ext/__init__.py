"""RetinaNet ("Focal Loss for Dense Object Detection") as Detectron2 components.

``import retinanet_ext`` registers every component of the package into Detectron2's
registries and changes nothing else: nothing is needed before building a model from a
config. The Detectron2 compatibility bridges (:mod:`retinanet_ext.compat`) are not applied
here; the project's venv installs them when Python starts (``docs/compat.md``).
"""

from retinanet_ext import compat

try:
    import retinanet_ext.modeling  # noqa: F401  (registers the model components)
except (ImportError, AttributeError) as error:  # Detectron2 v0.6 without the bridges
    help_text = compat.missing_bridges_help(error)
    if help_text is None:
        raise
    raise ImportError(help_text) from error
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
