"""The config keys retinanet_ext adds to Detectron2's defaults, in one place.

Detectron2's existing ``MODEL.RETINANET.*`` and ``MODEL.ANCHOR_GENERATOR.*`` keys are
reused wherever they mean the same thing; only what they cannot express is added here.
Their defaults are the one source of the project's defaults: the components take every
setting as an argument and keep no default of their own.

Reused as they are (see ``detectron2/config/defaults.py``):

* ``MODEL.RETINANET.{NUM_CLASSES, IN_FEATURES, NUM_CONVS, NORM, PRIOR_PROB}``: the head.
* ``MODEL.RETINANET.{IOU_THRESHOLDS, IOU_LABELS, BBOX_REG_WEIGHTS}``: anchor matching and
  box coding.
* ``MODEL.RETINANET.{FOCAL_LOSS_ALPHA, FOCAL_LOSS_GAMMA}``: alpha also balances the
  "AlphaBalancedBCELoss"; ``SMOOTH_L1_LOSS_BETA``: the smooth L1 box loss.
* ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``: the box loss, "smooth_l1", "giou", "diou" or "ciou"
  (as in Detectron2) or any name in ``RETINANET_EXT_BOX_LOSS_REGISTRY``.
* ``MODEL.RETINANET.{SCORE_THRESH_TEST, TOPK_CANDIDATES_TEST, NMS_THRESH_TEST}`` and
  ``TEST.DETECTIONS_PER_IMAGE``: post-processing.
* ``MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS, OFFSET}``, ``MODEL.FPN.*``,
  ``MODEL.RESNETS.*``, ``MODEL.PIXEL_MEAN/STD``, ``VIS_PERIOD``, ``INPUT.FORMAT``.

The defaults below make a config that only switches ``META_ARCHITECTURE``,
``BACKBONE.NAME`` and ``ANCHOR_GENERATOR.NAME`` to ours (:func:`use_retinanet_ext_components`)
behave exactly like Detectron2's ``RetinaNet``.

Every key the project writes to a config is defined here, so a config that one of its tools
saved (``OUTPUT_DIR/config.yaml`` of ``train_net.py``, of ``--demo``, of a sweep's runs)
loads in every other. Keys that moved keep loading under their old names
(:data:`RENAMED_KEYS`, read by :func:`retinanet_ext.engine.load_config`), with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import log_first_n

from retinanet_ext.structures import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "DETECTRON2_RETINANET_COMPONENTS",
    "RENAMED_KEYS",
    "RETINANET_EXT_COMPONENTS",
    "add_retinanet_ext_config",
    "get_retinanet_ext_cfg",
    "rename_deprecated_keys",
    "rename_deprecated_overrides",
    "use_detectron2_retinanet",
    "use_retinanet_ext_components",
]

#: The config values that select retinanet_ext's components instead of Detectron2's.
RETINANET_EXT_COMPONENTS = {
    "MODEL.META_ARCHITECTURE": "RetinaNetExt",
    "MODEL.BACKBONE.NAME": "build_retinanet_ext_resnet_fpn_backbone",
    "MODEL.ANCHOR_GENERATOR.NAME": "RetinaNetExtAnchorGenerator",
}
#: The same keys' values for Detectron2's own RetinaNet (for side-by-side comparisons).
DETECTRON2_RETINANET_COMPONENTS = {
    "MODEL.META_ARCHITECTURE": "RetinaNet",
    "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone",
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
}

#: Keys that moved, old name -> new name. The engine keys had a top-level ``RETINANET_EXT``
#: node of their own beside ``MODEL.RETINANET_EXT``; now the project has one node.
RENAMED_KEYS = {
    "RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP": "MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP",
    "RETINANET_EXT.NUM_THREADS": "MODEL.RETINANET_EXT.NUM_THREADS",
    "RETINANET_EXT.EMA.ENABLED": "MODEL.RETINANET_EXT.EMA.ENABLED",
    "RETINANET_EXT.EMA.DECAY": "MODEL.RETINANET_EXT.EMA.DECAY",
    "RETINANET_EXT.EMA.WARMUP_ITERS": "MODEL.RETINANET_EXT.EMA.WARMUP_ITERS",
}


def add_retinanet_ext_config(cfg: CfgNode) -> CfgNode:
    """Add retinanet_ext's keys, with their defaults, to ``cfg`` (in place); returns it.

    All of them sit in one node, ``MODEL.RETINANET_EXT``, the engine's keys too: it held all
    but five of them, and every shipped and saved config names it, so moving those five
    broke least. ``DEMO.*`` (:func:`_add_demo_config`) is the demo's data set, not a setting;
    the keys of image reading and of the training set's make-up join Detectron2's own
    ``INPUT`` and ``DATALOADER`` nodes beside their kin (:func:`_add_data_config`).
    """
    cfg.MODEL.RETINANET_EXT = CfgNode()
    ext = cfg.MODEL.RETINANET_EXT

    # Name of the head in RETINANET_EXT_HEAD_REGISTRY (retinanet_ext.modeling.head).
    ext.HEAD_NAME = "RetinaNetExtHead"

    # Anchor assignment, a name in RETINANET_EXT_ASSIGNER_REGISTRY (modeling/matching.py):
    # "IoUAssigner" (paper, Sec. 4: MODEL.RETINANET.IOU_THRESHOLDS / IOU_LABELS) or
    # "ATSSAssigner" (Zhang et al., CVPR 2020: adaptive IoU threshold per object).
    ext.ASSIGNER = "IoUAssigner"
    # ATSS: candidate anchors per pyramid level, closest to each object's centre (paper: 9).
    ext.ATSS_TOPK = 9

    # Name of the classification loss in RETINANET_EXT_CLS_LOSS_REGISTRY (losses.py):
    # "SigmoidFocalLoss" (paper, Sec. 3.2), "AlphaBalancedBCELoss" (Sec. 3.1; alpha from
    # MODEL.RETINANET.FOCAL_LOSS_ALPHA), "BCELoss" (plain binary cross-entropy), or the
    # IoU-aware "QualityFocalLoss" (Li et al. 2020) and "VarifocalLoss" (Zhang et al. 2021).
    ext.CLS_LOSS_NAME = "SigmoidFocalLoss"
    # Focusing parameter beta of the quality focal loss (its paper's best: 2).
    ext.QFL_BETA = 2.0
    # Weight and focusing parameter of the varifocal loss's negatives (its paper: 0.75, 2).
    ext.VFL_ALPHA = 0.75
    ext.VFL_GAMMA = 2.0

    # Weight of the IoU-based box losses (MODEL.RETINANET.BBOX_REG_LOSS_TYPE "giou", "diou",
    # "ciou"). 1.0 is Detectron2's (unweighted) loss.
    ext.GIOU_LOSS_WEIGHT = 1.0

    # What the summed losses are divided by, a name in RETINANET_EXT_LOSS_NORMALIZER_REGISTRY:
    # "EMALossNormalizer" (Detectron2: exponential moving average of the number of
    # foreground anchors) or "ForegroundCountLossNormalizer" (paper, Sec. 4.1: this batch's
    # number of foreground anchors).
    ext.LOSS_NORMALIZER = "EMALossNormalizer"
    # Start value and momentum of EMALossNormalizer (Detectron2's constants).
    ext.LOSS_NORMALIZER_EMA_INIT = 100.0
    ext.LOSS_NORMALIZER_EMA_MOMENTUM = 0.9

    # Whether each ground-truth box also claims its best-overlapping anchors even below
    # the foreground IoU threshold (Detectron2's RetinaNet always does; the paper does not).
    ext.ALLOW_LOW_QUALITY_MATCHES = True

    # Input of the P6 conv: "res5" (C5; paper and Detectron2) or "p5" (the FPN output).
    ext.P6_IN_FEATURE = "res5"

    # Numeric precision of the backbone and head (retinanet_ext/modeling/precision.py):
    # "float32" (exact), "bfloat16" (CUDA, or a CPU with native bf16: AVX512-BF16/AMX; refused
    # elsewhere), "float16" (CUDA; training turns SOLVER.AMP.ENABLED on for Detectron2's
    # gradient scaler) or "auto" (bfloat16 where native, else float32 with a warning). Anchors,
    # decoding, NMS and the losses stay float32.
    ext.PRECISION = "float32"
    # Channels-last memory layout for the backbone, head and input batch (float32 outputs
    # equal to rounding, not bit for bit; see benchmarks/results for where it is faster).
    # On whatever this says with bfloat16 on a CPU and float16/bfloat16 on CUDA (faster there:
    # docs/benchmarks.md).
    ext.CHANNELS_LAST = False
    # torch.compile the backbone and head (not the post-processing, whose shapes vary): the
    # first forward at each new input shape compiles (tens of seconds on a CPU).
    ext.COMPILE = False

    # Soft-NMS at inference (Bodla et al., ICCV 2017) instead of NMS: "" (off: class-wise NMS
    # at MODEL.RETINANET.NMS_THRESH_TEST, the paper's), "linear" (scores of boxes overlapping
    # a better one by more than NMS_THRESH_TEST decay by 1 - IoU) or "gaussian" (by
    # exp(-IoU^2 / SIGMA)); boxes whose score falls to MIN_SCORE or below are dropped.
    ext.SOFT_NMS_METHOD = ""
    ext.SOFT_NMS_SIGMA = 0.5
    ext.SOFT_NMS_MIN_SCORE = 0.001

    # Choose MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS (and, where objects are too small
    # for the finest grid, the input size) from DATASETS.TRAIN's boxes when train_net.py
    # starts (retinanet-ext analyze-anchors's suggestion); the config saved to OUTPUT_DIR
    # then holds the anchors used, with this key False. A model cannot be built from a
    # config where it is still True.
    ext.ANCHORS_FROM_DATA = False

    # Anchor sizes per octave: each size x in MODEL.ANCHOR_GENERATOR.SIZES becomes
    # x * 2^(i / n) for i in 0..n-1 (paper, Sec. 4: n = 3 with SIZES [[32], [64], ..., [512]]).
    # 1 uses SIZES as given, which is what Detectron2's Base-RetinaNet.yaml expects (it
    # lists the three scales per level itself).
    ext.ANCHOR_SCALES_PER_OCTAVE = 1

    # Training and run-time keys (the engine's, not the model's): checkpoints, threads, EMA.
    # Periodic checkpoints (model_NNNNNNN.pth) kept in OUTPUT_DIR, the newest ones; 0 keeps
    # all. model_final.pth and the one last_checkpoint names are never removed.
    ext.CHECKPOINT_MAX_TO_KEEP = 0
    # CPU threads of the model (torch.set_num_threads) in train_net.py (training, evaluation,
    # the demo) and retinanet-ext predict; a Predictor in your own program leaves your
    # setting alone. 0: OMP_NUM_THREADS if set, else the CPUs this process may run on
    # (affinity and cgroup quota; PyTorch's own default counts the host's cores, too many in
    # a CPU-limited container).
    ext.NUM_THREADS = 0

    # Exponential moving average of the weights, evaluated instead of them during and after
    # training and saved in checkpoints as "ema" (retinanet_ext/engine/ema.py). Off: the
    # paper evaluates the trained weights.
    ext.EMA = CfgNode()
    ext.EMA.ENABLED = False
    # EMA_t = d_t * EMA_(t-1) + (1 - d_t) * weights_t, d_t = DECAY * (1 - exp(-t / WARMUP_ITERS))
    # (YOLOv5's and timm's values). The ramp keeps the random initialisation out of the
    # average in short runs (a constant 0.9998 leaves it 92 % of the EMA after 400
    # iterations); the average spans about 1 / (1 - d_t) steps, so for a run of a few hundred
    # iterations lower both (e.g. DECAY 0.99, WARMUP_ITERS 100). WARMUP_ITERS 0: constant DECAY.
    ext.EMA.DECAY = 0.9998
    ext.EMA.WARMUP_ITERS = 2000

    _add_data_config(cfg)
    _add_demo_config(cfg)
    # load_config reads the old names; a merge of one's own gets yacs' "Key ... was renamed
    # to ..." error instead of "Non-existent config key" (a file's old node, an override's key).
    for old_name, new_name in {"RETINANET_EXT": "MODEL.RETINANET_EXT", **RENAMED_KEYS}.items():
        if not cfg.key_is_renamed(old_name):
            cfg.register_renamed_key(old_name, new_name)
    return cfg


def _add_data_config(cfg: CfgNode) -> None:
    """Keys added to Detectron2's ``INPUT`` and ``DATALOADER`` nodes: how image files are read
    (retinanet_ext/structures.py, data/mapper.py) and which images go into training."""
    # Image files whose header declares more pixels are refused before a pixel is decoded,
    # naming the file (a decompression bomb, or a scan too large to train on): Pillow's own
    # warning threshold, about 9459 x 9459. 0: no limit.
    cfg.INPUT.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
    # Images that cannot be decoded (or are over INPUT.MAX_IMAGE_PIXELS) are dropped with
    # their annotations, listed in the summary and in OUTPUT_DIR/dropped_images.txt, instead
    # of stopping the run at start (train_net.py --skip-bad-images sets it).
    cfg.DATALOADER.SKIP_BAD_IMAGES = False
    # Share (0-1) of the training images without boxes (background) kept in training, drawn
    # at random (seed: SEED, or 0 where SEED < 0). -1: DATALOADER.FILTER_EMPTY_ANNOTATIONS
    # decides, as in Detectron2 (its default, True, drops them all).
    cfg.DATALOADER.BACKGROUND_SHARE = -1.0


def _add_demo_config(cfg: CfgNode) -> None:
    """``DEMO.*``: the synthetic data set of ``train_net.py --demo`` (retinanet_ext/demo.py)
    and its drawings. A node of its own, as ``DATASETS`` is: it describes data, not the
    detector; here so that the config the demo saves loads in every tool."""
    cfg.DEMO = CfgNode()
    # Where the data set goes; "" = <OUTPUT_DIR>/synthetic_data.
    cfg.DEMO.DATA_DIR = ""
    # Images in the training and held-out splits.
    cfg.DEMO.NUM_TRAIN = 800
    cfg.DEMO.NUM_VAL = 200
    # Generated images are IMAGE_SIZE x IMAGE_SIZE; keep INPUT.*_SIZE_* equal to it.
    cfg.DEMO.IMAGE_SIZE = 128
    # Seed of the generator (the data set is a function of these keys).
    cfg.DEMO.DATA_SEED = 0
    # Objects tried per image, [min, max] inclusive; their size in px, [min, max] (log-uniform).
    cfg.DEMO.OBJECTS_PER_IMAGE = [6, 14]
    cfg.DEMO.OBJECT_SIZE = [10.0, 40.0]
    # Probability of each class (retinanet_ext.data.synthetic.CLASS_FREQUENCIES, written out:
    # importing it would import the generator and cv2 with the package).
    cfg.DEMO.CLASS_FREQUENCIES = [0.55, 0.20, 0.12, 0.08, 0.05]
    # Multiplier of the background clutter; standard deviation of the pixel noise.
    cfg.DEMO.CLUTTER = 1.0
    cfg.DEMO.NOISE = 8.0
    # Probability that an object has one of its class's own colours (else any colour).
    cfg.DEMO.CLASS_COLOUR_PROB = 0.75
    # Held-out images drawn with their predictions into <OUTPUT_DIR>/predictions/.
    cfg.DEMO.NUM_VIS_IMAGES = 4
    cfg.DEMO.VIS_SCORE_THRESH = 0.4


def get_retinanet_ext_cfg() -> CfgNode:
    """Detectron2's default config plus retinanet_ext's keys."""
    return add_retinanet_ext_config(get_cfg())


def rename_deprecated_keys(loaded: dict[str, Any], where: str) -> dict[str, Any]:
    """``loaded`` (one YAML config as nested dicts) with the old names of :data:`RENAMED_KEYS`
    moved to the new ones, overriding them; one warning names the pairs."""
    if not isinstance(loaded, dict):  # not a mapping: Detectron2's merge says so
        return loaded
    renamed = _nested_copy(loaded)
    moved = []
    for old_name, new_name in RENAMED_KEYS.items():
        *old_parents, old_leaf = old_name.split(".")
        parent = _find(renamed, old_parents)
        if parent is None or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_parents, new_leaf = new_name.split(".")
        node = renamed
        for name in new_parents:
            node = node.setdefault(name, {})
        node[new_leaf] = value
        moved.append((old_name, new_name))
    for old_node in {name.split(".")[0] for name in RENAMED_KEYS}:
        if isinstance(renamed.get(old_node), dict):
            _prune_empty(renamed[old_node])
            if not renamed[old_node]:
                del renamed[old_node]
    _warn_renamed(moved, where)
    return renamed


def rename_deprecated_overrides(opts: list[str], where: str) -> list[str]:
    """``KEY VALUE`` overrides with the old names of :data:`RENAMED_KEYS` replaced by the new
    ones; one warning names the pairs."""
    renamed = list(opts)
    moved = []
    for index in range(0, len(renamed) - 1, 2):
        new_name = RENAMED_KEYS.get(renamed[index])
        if new_name is not None:
            moved.append((renamed[index], new_name))
            renamed[index] = new_name
    _warn_renamed(moved, where)
    return renamed


def _warn_renamed(moved: list[tuple[str, str]], where: str) -> None:
    if moved:  # once per message: a sweep loads its config many times
        pairs = ", ".join(f"{old} -> {new}" for old, new in moved)
        log_first_n(logging.WARNING, f"{where} uses renamed config keys, read under their new "
                    f"names: {pairs}. Use the new names: the old ones are deprecated.",
                    n=1, name=__name__, key="message")


def _nested_copy(node: dict[str, Any]) -> dict[str, Any]:
    return {key: _nested_copy(value) if isinstance(value, dict) else value
            for key, value in node.items()}


def _find(node: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    for name in path:
        node = node.get(name)
        if not isinstance(node, dict):
            return None
    return node


def _prune_empty(node: dict[str, Any]) -> None:
    """Remove the dicts under ``node`` left empty once their keys moved out."""
    for key in [key for key, value in node.items() if isinstance(value, dict)]:
        _prune_empty(node[key])
        if not node[key]:
            del node[key]


def use_retinanet_ext_components(cfg: CfgNode) -> CfgNode:
    """Select retinanet_ext's meta-architecture, backbone and anchor generator in ``cfg``
    (in place; everything else unchanged); returns it."""
    return _set(cfg, RETINANET_EXT_COMPONENTS)


def use_detectron2_retinanet(cfg: CfgNode) -> CfgNode:
    """Select Detectron2's own RetinaNet, backbone and anchor generator in ``cfg`` (in place;
    everything else unchanged, e.g. to compare both on one config); returns it."""
    return _set(cfg, DETECTRON2_RETINANET_COMPONENTS)


def _set(cfg: CfgNode, values: dict[str, str]) -> CfgNode:
    for key, value in values.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg
