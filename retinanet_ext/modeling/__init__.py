"""RetinaNet's components, each registered into a Detectron2-style registry.

==================  ==========================================  ==============================
component           registered name                             registry
==================  ==========================================  ==============================
backbone            build_retinanet_ext_resnet_fpn_backbone     BACKBONE_REGISTRY (Detectron2)
anchors             RetinaNetExtAnchorGenerator                 ANCHOR_GENERATOR_REGISTRY
head                RetinaNetExtHead                            RETINANET_EXT_HEAD_REGISTRY
assigner            IoUAssigner, ATSSAssigner                   RETINANET_EXT_ASSIGNER_REGISTRY
cls loss            SigmoidFocalLoss, AlphaBalancedBCELoss,     RETINANET_EXT_CLS_LOSS_REGISTRY
                    BCELoss, QualityFocalLoss, VarifocalLoss
box loss            SmoothL1BoxLoss, GIoUBoxLoss, DIoUBoxLoss,  RETINANET_EXT_BOX_LOSS_REGISTRY
                    CIoUBoxLoss
loss normaliser     EMALossNormalizer,                          RETINANET_EXT_LOSS_NORMALIZER_
                    ForegroundCountLossNormalizer               REGISTRY
meta-architecture   RetinaNetExt                                META_ARCH_REGISTRY (Detectron2)
==================  ==========================================  ==============================

The criterion (:mod:`.criterion`) combines assigner, losses and normaliser; post-processing
(:mod:`.postprocess`) is a function configured by existing ``MODEL.RETINANET.*`` keys.
"""

from retinanet_ext.modeling.anchors import RetinaNetExtAnchorGenerator
from retinanet_ext.modeling.backbone import build_retinanet_ext_resnet_fpn_backbone
from retinanet_ext.modeling.criterion import RetinaNetCriterion
from retinanet_ext.modeling.head import (
    RETINANET_EXT_HEAD_REGISTRY,
    RetinaNetExtHead,
    build_retinanet_ext_head,
)
from retinanet_ext.modeling.losses import (
    RETINANET_EXT_BOX_LOSS_REGISTRY,
    RETINANET_EXT_CLS_LOSS_REGISTRY,
    RETINANET_EXT_LOSS_NORMALIZER_REGISTRY,
)
from retinanet_ext.modeling.matching import RETINANET_EXT_ASSIGNER_REGISTRY, AnchorTargets
from retinanet_ext.modeling.meta_arch import RetinaNetExt

__all__ = [
    "RETINANET_EXT_ASSIGNER_REGISTRY",
    "RETINANET_EXT_BOX_LOSS_REGISTRY",
    "RETINANET_EXT_CLS_LOSS_REGISTRY",
    "RETINANET_EXT_HEAD_REGISTRY",
    "RETINANET_EXT_LOSS_NORMALIZER_REGISTRY",
    "AnchorTargets",
    "RetinaNetCriterion",
    "RetinaNetExt",
    "RetinaNetExtAnchorGenerator",
    "RetinaNetExtHead",
    "build_retinanet_ext_head",
    "build_retinanet_ext_resnet_fpn_backbone",
]
