"""RetinaNet as a Detectron2 meta-architecture, built from our registered components.

Input and output contract, and ``state_dict`` keys, are those of Detectron2's ``RetinaNet``,
so its trainer, evaluator, data loader and checkpoints work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from retinanet_ext.modeling.head import build_retinanet_ext_head, flatten_dense_predictions
from retinanet_ext.modeling.matching import build_anchor_matcher, label_anchors
from retinanet_ext.modeling.postprocess import decode_detections

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

__all__ = ["RetinaNetExt"]


@META_ARCH_REGISTRY.register()
class RetinaNetExt(nn.Module):
    """One-stage detector: backbone -> dense head -> focal loss (training) or decoded,
    NMS-filtered detections (inference).

    ``forward`` takes a list of dicts, one per image, with ``image`` (Tensor[C, H, W],
    ``INPUT.FORMAT`` channel order, 0-255), ``instances`` (Instances with ``gt_boxes`` and
    ``gt_classes``; training only) and optionally ``height``/``width`` (output resolution).
    Training returns ``{"loss_cls", "loss_box_reg"}``; inference returns, per image,
    ``{"instances": Instances(pred_boxes, scores, pred_classes)}`` at ``height`` x ``width``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        input_format: str = "BGR",
    ) -> None:
        """
        Args:
            backbone: gives the features named in ``head_in_features``.
            head: dense head with ``forward(features) -> (logits, deltas)`` and ``losses``,
                see :class:`~retinanet_ext.modeling.head.RetinaNetExtHead`.
            head_in_features: backbone features the head sees, high to low resolution.
            anchor_generator: ``forward(features) -> list[Boxes]`` per level, with
                ``num_anchors`` per level (ours or Detectron2's).
            anchor_matcher: labels anchors foreground / background / ignored by IoU.
            box2box_transform: box coding of the head's deltas.
            num_classes: K.
            pixel_mean, pixel_std: per-channel normalisation, ``(image - mean) / std``.
            test_score_thresh: keep candidates with score above this (per level).
            test_topk_candidates: then at most this many per level.
            test_nms_thresh: IoU above which class-wise NMS suppresses the worse box.
            max_detections_per_image: detections kept per image after NMS.
            input_format: channel order of the images (for visualisation tools).
        """
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
                "must have one value per image channel."
            )
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        # Not persistent, as in Detectron2: they come from the config, not the checkpoint.
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        backbone_shapes = backbone.output_shape()
        in_features = cfg.MODEL.RETINANET.IN_FEATURES
        missing = [name for name in in_features if name not in backbone_shapes]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES {list(in_features)}: {missing} not produced by "
                f"the backbone {cfg.MODEL.BACKBONE.NAME}, which gives {sorted(backbone_shapes)}."
            )
        feature_shapes = [backbone_shapes[name] for name in in_features]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                "The head shares its predictors across levels, so every level needs the same "
                f"number of anchors per location; the anchor generator gives "
                f"{anchor_generator.num_anchors} (MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS)."
            )
        return {
            "backbone": backbone,
            "head": build_retinanet_ext_head(cfg, feature_shapes, num_anchors.pop()),
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "anchor_matcher": build_anchor_matcher(cfg),
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: Sequence[dict[str, Any]]) -> ImageList:
        """Normalise, pad to the backbone's size divisibility and batch the images."""
        images = [
            (item["image"].to(self.device) - self.pixel_mean) / self.pixel_std
            for item in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(
        self, batched_inputs: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Instances]]:
        """See the class docstring."""
        if self.training and any("instances" not in item for item in batched_inputs):
            raise ValueError(
                "RetinaNetExt in training mode needs 'instances' (ground truth) in every input "
                "dict; call model.eval() for inference."
            )
        images = self.preprocess_image(batched_inputs)
        all_features = self.backbone(images.tensor)
        features = [all_features[name] for name in self.head_in_features]
        predictions = self.head(features)
        if self.training:
            gt_instances = [item["instances"].to(self.device) for item in batched_inputs]
            return self.losses(features, predictions, gt_instances)

        detections = self.detect(features, predictions, images.image_sizes)
        outputs = []
        for instances, item, image_size in zip(
            detections, batched_inputs, images.image_sizes, strict=True
        ):
            height = item.get("height", image_size[0])
            width = item.get("width", image_size[1])
            outputs.append({"instances": detector_postprocess(instances, height, width)})
        return outputs

    def _anchors(self, features: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
        """All anchors, Tensor[R, 4], and the number R_i of each level."""
        anchor_boxes = self.anchor_generator(features)
        return torch.cat([boxes.tensor for boxes in anchor_boxes]), [len(b) for b in anchor_boxes]

    def losses(
        self,
        features: Sequence[Tensor],
        predictions: tuple[Sequence[Tensor], Sequence[Tensor]],
        gt_instances: Sequence[Instances],
    ) -> dict[str, Tensor]:
        """Training losses from the head's per-level ``(logits, deltas)`` and ground truth.

        Args:
            features: per level, Tensor[N, C, H_i, W_i] (for the anchor grid sizes).
            predictions: the head's output, see :meth:`RetinaNetExtHead.forward`.
            gt_instances: per image, Instances with ``gt_boxes`` and ``gt_classes``.
        """
        anchors, _ = self._anchors(features)
        logits_per_level, deltas_per_level = predictions
        gt_labels, gt_boxes = label_anchors(
            anchors, gt_instances, self.anchor_matcher, self.num_classes
        )
        return self.head.losses(
            anchors,
            flatten_dense_predictions(logits_per_level, self.num_classes),
            flatten_dense_predictions(deltas_per_level, 4),
            gt_labels,
            gt_boxes,
            self.box2box_transform,
        )

    def detect(
        self,
        features: Sequence[Tensor],
        predictions: tuple[Sequence[Tensor], Sequence[Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Detections, in input (padded batch) coordinates, from the head's output.

        See :func:`~retinanet_ext.modeling.postprocess.decode_detections` for the fields.
        """
        anchors, anchors_per_level = self._anchors(features)
        logits_per_level, deltas_per_level = predictions
        return decode_detections(
            flatten_dense_predictions(logits_per_level, self.num_classes),
            flatten_dense_predictions(deltas_per_level, 4),
            anchors,
            anchors_per_level,
            image_sizes,
            self.box2box_transform,
            score_thresh=self.test_score_thresh,
            topk_candidates=self.test_topk_candidates,
            nms_thresh=self.test_nms_thresh,
            max_detections_per_image=self.max_detections_per_image,
        )
