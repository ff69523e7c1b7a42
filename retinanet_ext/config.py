"""The config keys retinanet_ext adds to Detectron2's defaults, in one place.

Detectron2's existing ``MODEL.RETINANET.*`` and ``MODEL.ANCHOR_GENERATOR.*`` keys are
reused wherever they mean the same thing; only what they cannot express is added here.

Reused as they are (see ``detectron2/config/defaults.py``):

* ``MODEL.RETINANET.{NUM_CLASSES, IN_FEATURES, NUM_CONVS, NORM, PRIOR_PROB}``: the head.
* ``MODEL.RETINANET.{IOU_THRESHOLDS, IOU_LABELS, BBOX_REG_WEIGHTS}``: anchor matching and
  box coding.
* ``MODEL.RETINANET.{FOCAL_LOSS_ALPHA, FOCAL_LOSS_GAMMA}``: alpha also balances the
  "alpha_balanced_bce" loss; ``SMOOTH_L1_LOSS_BETA``: the smooth L1 box loss.
* ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``: the box loss, "smooth_l1" or "giou" (as in
  Detectron2) or any name in ``RETINANET_EXT_BOX_LOSS_REGISTRY``.
* ``MODEL.RETINANET.{SCORE_THRESH_TEST, TOPK_CANDIDATES_TEST, NMS_THRESH_TEST}`` and
  ``TEST.DETECTIONS_PER_IMAGE``: post-processing.
* ``MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS, OFFSET}``, ``MODEL.FPN.*``,
  ``MODEL.RESNETS.*``, ``MODEL.PIXEL_MEAN/STD``.

The defaults below make a config that only switches ``META_ARCHITECTURE``,
``BACKBONE.NAME`` and ``ANCHOR_GENERATOR.NAME`` to ours behave exactly like
Detectron2's ``RetinaNet``.
"""

from __future__ import annotations

from retinanet_ext.data.synthetic import CLASS_FREQUENCIES

from detectron2.config import CfgNode, get_cfg


def add_retinanet_ext_config(cfg: CfgNode) -> CfgNode:
    """Add retinanet_ext's keys, with their defaults, to ``cfg`` (in place); returns it."""
    cfg.MODEL.RETINANET_EXT = CfgNode()
    ext = cfg.MODEL.RETINANET_EXT

    # Name of the head in RETINANET_EXT_HEAD_REGISTRY (retinanet_ext.modeling.head).
    ext.HEAD_NAME = "RetinaNetExtHead"

    # Name of the classification loss in RETINANET_EXT_CLS_LOSS_REGISTRY (losses.py):
    # "SigmoidFocalLoss" (paper, Sec. 3.2), "AlphaBalancedBCELoss" (Sec. 3.1; alpha from
    # MODEL.RETINANET.FOCAL_LOSS_ALPHA) or "BCELoss" (plain binary cross-entropy).
    ext.CLS_LOSS_NAME = "SigmoidFocalLoss"

    # Weight of the GIoU box loss (used when MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "giou").
    # 1.0 is Detectron2's (unweighted) GIoU loss.
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

    # Anchor sizes per octave: each size x in MODEL.ANCHOR_GENERATOR.SIZES becomes
    # x * 2^(i / n) for i in 0..n-1 (paper, Sec. 4: n = 3 with SIZES [[32], [64], ..., [512]]).
    # 1 uses SIZES as given, which is what Detectron2's Base-RetinaNet.yaml expects (it
    # lists the three scales per level itself).
    ext.ANCHOR_SCALES_PER_OCTAVE = 1

    # The built-in demo (train_net.py --demo, retinanet_ext/demo.py): its synthetic
    # data set and the drawing of predictions.
    cfg.DEMO = CfgNode()
    # where the data set goes; "" = <OUTPUT_DIR>/synthetic_data
    cfg.DEMO.DATA_DIR = ""
    cfg.DEMO.NUM_TRAIN = 800
    cfg.DEMO.NUM_VAL = 200
    # generated images are IMAGE_SIZE x IMAGE_SIZE; keep INPUT.*_SIZE_* equal to it
    cfg.DEMO.IMAGE_SIZE = 128
    cfg.DEMO.DATA_SEED = 0
    cfg.DEMO.OBJECTS_PER_IMAGE = [6, 14]
    cfg.DEMO.OBJECT_SIZE = [10.0, 40.0]
    cfg.DEMO.CLASS_FREQUENCIES = list(CLASS_FREQUENCIES)
    cfg.DEMO.CLUTTER = 1.0
    cfg.DEMO.NOISE = 8.0
    # probability that an object has one of its class's own colours (else any colour)
    cfg.DEMO.CLASS_COLOUR_PROB = 0.75
    # held-out images drawn with their predictions into <OUTPUT_DIR>/predictions/
    cfg.DEMO.NUM_VIS_IMAGES = 4
    cfg.DEMO.VIS_SCORE_THRESH = 0.4
    return cfg


def get_retinanet_ext_cfg() -> CfgNode:
    """Detectron2's default config plus retinanet_ext's keys."""
    return add_retinanet_ext_config(get_cfg())
