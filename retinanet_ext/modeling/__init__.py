"""RetinaNet's components, each registered into a Detectron2-style registry.

==================  ==========================================  ==============================
component           registered name                             registry
==================  ==========================================  ==============================
backbone            build_retinanet_ext_resnet_fpn_backbone     BACKBONE_REGISTRY (Detectron2)
anchors             RetinaNetExtAnchorGenerator                 ANCHOR_GENERATOR_REGISTRY
head                RetinaNetExtHead                            RETINANET_EXT_HEAD_REGISTRY
cls loss            SigmoidFocalLoss, AlphaBalancedBCELoss,     RETINANET_EXT_CLS_LOSS_REGISTRY
                    BCELoss
box loss            SmoothL1BoxLoss, GIoUBoxLoss                RETINANET_EXT_BOX_LOSS_REGISTRY
loss normaliser     EMALossNormalizer,                          RETINANET_EXT_LOSS_NORMALIZER_
                    ForegroundCountLossNormalizer               REGISTRY
meta-architecture   RetinaNetExt                                META_ARCH_REGISTRY (Detectron2)
==================  ==========================================  ==============================

Matching (:mod:`.matching`) and post-processing (:mod:`.postprocess`) are functions
configured by existing ``MODEL.RETINANET.*`` keys.
"""

from retinanet_ext.modeling.anchors import RetinaNetExtAnchorGenerator
from retinanet_ext.modeling.backbone import (
    P6P7Block,
    RetinaNetExtFPN,
    build_retinanet_ext_resnet_fpn_backbone,
)
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
from retinanet_ext.modeling.meta_arch import RetinaNetExt

__all__ = [
    "RETINANET_EXT_BOX_LOSS_REGISTRY",
    "RETINANET_EXT_CLS_LOSS_REGISTRY",
    "RETINANET_EXT_HEAD_REGISTRY",
    "RETINANET_EXT_LOSS_NORMALIZER_REGISTRY",
    "P6P7Block",
    "RetinaNetExt",
    "RetinaNetExtAnchorGenerator",
    "RetinaNetExtFPN",
    "RetinaNetExtHead",
    "build_retinanet_ext_head",
    "build_retinanet_ext_resnet_fpn_backbone",
]
