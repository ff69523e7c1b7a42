"""Config values checked before anything is built: one clear error naming the key.

yacs already refuses unknown keys and a value of another type than the default's
(``load_config`` turns both into :class:`ConfigError`); what it lets through, a value of
the right type but out of range, or a list holding the wrong things, fails here instead of
deep inside the model or after hours of training. Keys of Detectron2's R-CNN namespace
that RetinaNet ignores (the most reported RetinaNet mistake, detectron2#52, #1351) get a
warning naming the RetinaNet key to set.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import log_first_n

__all__ = ["ConfigError", "check_config"]

logger = logging.getLogger(__name__)

#: Meta-architectures that read ``MODEL.RETINANET.*`` (and ignore ``MODEL.ROI_HEADS.*``).
RETINANET_ARCHITECTURES = ("RetinaNetExt", "RetinaNet")
#: R-CNN keys RetinaNet ignores -> the RetinaNet key that does the job.
IGNORED_RCNN_KEYS = {
    "MODEL.ROI_HEADS.NUM_CLASSES": "MODEL.RETINANET.NUM_CLASSES",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "MODEL.RETINANET.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "MODEL.RETINANET.NMS_THRESH_TEST",
}


#: Where :func:`check_config` notes the values it passed, in the config node's ``__dict__``.
_CHECKED = "__retinanet_ext_checked__"


class ConfigError(ValueError):
    """A config file or override is malformed or names a key that does not exist."""


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _number(cfg: CfgNode, key: str, *, integer: bool = False) -> float:
    value = _get(cfg, key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        expected = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key} must be {expected}, found {type(value).__name__} {value!r}")
    return value


def _in_range(cfg: CfgNode, key: str, low: float | None, high: float | None, *,
              open_low: bool = False, open_high: bool = False, integer: bool = False) -> None:
    """``key`` is a number within [low, high] (or the open ends asked for)."""
    value = _number(cfg, key, integer=integer)
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        left = "(" if open_low else "["
        right = ")" if open_high else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{key} must be in {span}, found {value!r}")


def _number_list(key: str, values: Any, *, positive: bool = True) -> list[float]:
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{key} must be a non-empty list, found {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                positive and not value > 0) or not math.isfinite(value):
            what = "positive numbers" if positive else "numbers"
            raise ConfigError(f"{key} must hold {what}, found {value!r} in {list(values)}")
    return list(values)


def _per_level_list(cfg: CfgNode, key: str) -> None:
    """Anchor SIZES / ASPECT_RATIOS: a list of positive numbers, or one such list per level."""
    values = _get(cfg, key)
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{key} must be a non-empty list (one list per feature level), "
                          f"found {values!r}")
    if all(isinstance(v, list | tuple) for v in values):
        for level in values:
            _number_list(key, level)
    else:
        _number_list(key, values)


def _check_matching(cfg: CfgNode) -> None:
    key = "MODEL.RETINANET.IOU_THRESHOLDS"
    thresholds = _number_list(key, _get(cfg, key), positive=False)
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ConfigError(f"{key} must hold IoUs in [0, 1], found {thresholds}")
    if any(high < low for low, high in zip(thresholds, thresholds[1:], strict=False)):
        raise ConfigError(f"{key} must be increasing (background below the first, foreground "
                          f"from the last), found {thresholds}")
    labels = _get(cfg, "MODEL.RETINANET.IOU_LABELS")
    if not isinstance(labels, list | tuple) or len(labels) != len(thresholds) + 1 or any(
            isinstance(v, bool) or v not in (-1, 0, 1) for v in labels):
        raise ConfigError(f"MODEL.RETINANET.IOU_LABELS must hold {len(thresholds) + 1} labels "
                          f"from -1, 0, 1 (one per IOU_THRESHOLDS interval), found {labels!r}")


def _check_retinanet(cfg: CfgNode) -> None:
    _in_range(cfg, "MODEL.RETINANET.NUM_CLASSES", 1, None, integer=True)
    _in_range(cfg, "MODEL.RETINANET.NUM_CONVS", 0, None, integer=True)
    _check_matching(cfg)
    _in_range(cfg, "MODEL.RETINANET.PRIOR_PROB", 0.0, 1.0, open_low=True, open_high=True)
    _in_range(cfg, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", 0.0, None)
    _in_range(cfg, "MODEL.RETINANET.FOCAL_LOSS_ALPHA", None, 1.0)  # < 0: no alpha weighting
    _in_range(cfg, "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", 0.0, None)
    _in_range(cfg, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, 1.0)
    _in_range(cfg, "MODEL.RETINANET.NMS_THRESH_TEST", 0.0, 1.0)
    _in_range(cfg, "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 1, None, integer=True)
    _per_level_list(cfg, "MODEL.ANCHOR_GENERATOR.SIZES")
    _per_level_list(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")


def _check_solver(cfg: CfgNode) -> None:
    _in_range(cfg, "SOLVER.BASE_LR", 0.0, None, open_low=True)
    _in_range(cfg, "SOLVER.IMS_PER_BATCH", 1, None, integer=True)
    _in_range(cfg, "SOLVER.MAX_ITER", 0, None, integer=True)
    _in_range(cfg, "SOLVER.CHECKPOINT_PERIOD", 1, None, integer=True)
    _in_range(cfg, "TEST.DETECTIONS_PER_IMAGE", 1, None, integer=True)
    if "RETINANET_EXT" in cfg.MODEL:  # a config with retinanet_ext's keys
        _in_range(cfg, "MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP", 0, None, integer=True)
        _in_range(cfg, "MODEL.RETINANET_EXT.NUM_THREADS", 0, None, integer=True)


def _check_data(cfg: CfgNode) -> None:
    """The keys retinanet_ext adds to ``INPUT`` / ``DATALOADER`` (a config with them)."""
    if "MAX_IMAGE_PIXELS" in cfg.INPUT:
        _in_range(cfg, "INPUT.MAX_IMAGE_PIXELS", 0, None, integer=True)
    if "BACKGROUND_SHARE" in cfg.DATALOADER:
        share = _number(cfg, "DATALOADER.BACKGROUND_SHARE")
        if share != -1 and not 0.0 <= share <= 1.0:
            raise ConfigError("DATALOADER.BACKGROUND_SHARE must be in [0, 1] (the share of "
                              "training images without boxes kept) or -1 (FILTER_EMPTY_"
                              f"ANNOTATIONS decides), found {share!r}")


def _warn_ignored_rcnn_keys(cfg: CfgNode) -> None:
    defaults = get_cfg()
    architecture = cfg.MODEL.META_ARCHITECTURE
    for rcnn_key, retinanet_key in IGNORED_RCNN_KEYS.items():
        value, ours = _get(cfg, rcnn_key), _get(cfg, retinanet_key)
        if value != _get(defaults, rcnn_key) and value != ours:
            log_first_n(
                logging.WARNING,
                f"{rcnn_key} is set to {value!r}, but {architecture} ignores the R-CNN keys: "
                f"set {retinanet_key} instead (now {ours!r})",
                n=1, name=__name__, key="message")


def check_config(cfg: CfgNode) -> None:
    """Check ``cfg``'s values before anything is built.

    ``load_config`` checks every config it reads; the ``Trainer`` checks the one it is given,
    which may have been changed since (in a notebook, a test, a benchmark). A config whose
    values passed already is not checked again: one check per training start, where
    ``train_net.py`` and the demo load the config and then build a ``Trainer`` from it.

    Raises:
        ConfigError: the first value out of range or of the wrong kind, naming its key.
    """
    values = repr(cfg)
    if cfg.__dict__.get(_CHECKED) == values:
        return
    if cfg.MODEL.META_ARCHITECTURE in RETINANET_ARCHITECTURES:
        _check_retinanet(cfg)
        _warn_ignored_rcnn_keys(cfg)
    _check_solver(cfg)
    _check_data(cfg)
    # Beside yacs' own flags (IMMUTABLE, ...): travels with clone(), never in dump().
    cfg.__dict__[_CHECKED] = values
