"""RetinaNet as a Detectron2 meta-architecture, built from our registered components.

Detectron2's ``DenseDetector`` does the device handling, pre-processing, the call of the
backbone and head, the training/inference split and the rescaling of detections; this class
adds what differs: the criterion (:mod:`.criterion`) for training, the vectorised
post-processing (:mod:`.postprocess`) for inference, and the training visualisation that
``VIS_PERIOD`` asks for. Input and output contract, and ``state_dict`` keys, are those of
Detectron2's ``RetinaNet``, so its trainer, evaluator, data loader and checkpoints work
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from retinanet_ext.modeling._cfg import retinanet_ext_node
from retinanet_ext.modeling.criterion import RetinaNetCriterion
from retinanet_ext.modeling.head import build_retinanet_ext_head, flatten_dense_predictions
from retinanet_ext.modeling.postprocess import SoftNMS, decode_detections
from retinanet_ext.modeling.precision import (
    network_autocast,
    post_head_float32,
    resolve_precision,
)

__all__ = ["RetinaNetExt"]


@META_ARCH_REGISTRY.register()
class RetinaNetExt(DenseDetector):
    """One-stage detector: backbone -> dense head -> criterion (training) or decoded,
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
        box2box_transform: Box2BoxTransform,
        criterion: RetinaNetCriterion,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        test_score_thresh: float,
        test_topk_candidates: int,
        test_nms_thresh: float,
        max_detections_per_image: int,
        soft_nms: SoftNMS | None = None,
        network_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile_network: bool = False,
        vis_period: int = 0,
        input_format: str = "BGR",
    ) -> None:
        """
        Args:
            backbone: gives the features named in ``head_in_features``.
            head: dense head, ``forward(features) -> (logits, deltas)`` per level
                (see :data:`~.head.RETINANET_EXT_HEAD_REGISTRY`).
            head_in_features: backbone features the head sees, high to low resolution.
            anchor_generator: ``forward(features) -> list[Boxes]`` per level, with
                ``num_anchors`` per level (ours or Detectron2's).
            box2box_transform: box coding of the head's deltas.
            criterion: the training losses (:class:`~.criterion.RetinaNetCriterion`).
            num_classes: K.
            pixel_mean, pixel_std: per-channel normalisation, ``(image - mean) / std``.
            test_score_thresh: keep candidates with score above this (per level).
            test_topk_candidates: then at most this many per level.
            test_nms_thresh: IoU above which class-wise NMS suppresses the worse box.
            max_detections_per_image: detections kept per image after NMS.
            soft_nms: Soft-NMS settings instead of NMS (None: NMS).
            network_dtype: the dtype the backbone and head compute in: float32, or autocast
                to bfloat16 / float16 (``MODEL.RETINANET_EXT.PRECISION`` as
                :func:`~.precision.resolve_precision` resolves it); the rest stays float32.
            channels_last: backbone, head and input batch in channels-last memory layout.
            compile_network: ``torch.compile`` the backbone and the head in place (state-dict
                keys unchanged); post-processing, whose shapes vary, is not compiled.
            vis_period: every this many training iterations, draw the ground truth and the
                predictions of the first image to the event storage (0: never).
            input_format: channel order of the images ("BGR" or "RGB"), for the drawings.
        """
        _check_pixel_statistics(pixel_mean, pixel_std)
        super().__init__(
            backbone, head, list(head_in_features), pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        # Training: anchors, box coding and the losses.
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.criterion = criterion
        self.num_classes = num_classes
        # Inference: post-processing of the head's outputs.
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.soft_nms = soft_nms
        # Training visualisation.
        self.vis_period = vis_period
        self.input_format = input_format
        self._set_up_network(network_dtype, channels_last, compile_network)

    def _set_up_network(
        self, network_dtype: torch.dtype, channels_last: bool, compile_network: bool
    ) -> None:
        """How the backbone and head run: their dtype, memory layout and compilation."""
        self.network_dtype = network_dtype
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            self.head.to(memory_format=torch.channels_last)
        if compile_network:
            self.backbone.compile(dynamic=True)
            self.head.compile(dynamic=True)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        if retinanet_ext_node(cfg).ANCHORS_FROM_DATA:
            raise ValueError(
                "MODEL.RETINANET_EXT.ANCHORS_FROM_DATA is True: the anchors are chosen from the "
                "training data when train_net.py starts. Build the model from the config it "
                "wrote to OUTPUT_DIR/config.yaml, which holds them, or set the key False."
            )
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
        num_anchors = set(anchor_generator.num_cell_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                "The head shares its predictors across levels, so every level needs the same "
                f"number of anchors per location; the anchor generator gives "
                f"{anchor_generator.num_cell_anchors} (MODEL.ANCHOR_GENERATOR.SIZES / "
                "ASPECT_RATIOS)."
            )
        box2box_transform = Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS)
        ext = retinanet_ext_node(cfg)
        network_dtype = resolve_precision(ext.PRECISION, cfg.MODEL.DEVICE)
        soft_nms = ext.SOFT_NMS_METHOD and SoftNMS(
            ext.SOFT_NMS_METHOD, ext.SOFT_NMS_SIGMA, ext.SOFT_NMS_MIN_SCORE
        )
        return {
            "backbone": backbone,
            "head": build_retinanet_ext_head(cfg, feature_shapes, num_anchors.pop()),
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "box2box_transform": box2box_transform,
            "criterion": RetinaNetCriterion(cfg, box2box_transform),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "soft_nms": soft_nms or None,
            "network_dtype": network_dtype,
            "channels_last": ext.CHANNELS_LAST or reduced_precision_layout(
                network_dtype, cfg.MODEL.DEVICE),
            "compile_network": ext.COMPILE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward(
        self, batched_inputs: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Instances]]:
        """See the class docstring (the work is ``DenseDetector.forward``'s)."""
        if self.training and any("instances" not in item for item in batched_inputs):
            raise ValueError(
                "RetinaNetExt in training mode needs 'instances' (ground truth) in every input "
                "dict; call model.eval() for inference."
            )
        with network_autocast(self.network_dtype, self.device.type):
            return super().forward(batched_inputs)

    def preprocess_image(self, batched_inputs: Sequence[dict[str, Any]]) -> ImageList:
        """``DenseDetector``'s normalise, pad and batch; channels-last where configured."""
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def forward_training(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: tuple[list[Tensor], list[Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        """Losses from the head's per-level ``(logits, deltas)`` and the ground truth."""
        logits_per_level, deltas_per_level = predictions
        with post_head_float32(self.device.type):
            losses = self.criterion(
                self.anchor_generator(features),
                flatten_dense_predictions(logits_per_level, self.num_classes).float(),
                flatten_dense_predictions(deltas_per_level, 4).float(),
                gt_instances,
            )
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self._visualize(images, features, predictions, gt_instances)
        return losses

    def forward_inference(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: tuple[list[Tensor], list[Tensor]],
    ) -> list[Instances]:
        """Detections, in input (padded batch) coordinates, from the head's output.

        See :func:`~retinanet_ext.modeling.postprocess.decode_detections` for the fields.
        """
        anchor_boxes = self.anchor_generator(features)
        logits_per_level, deltas_per_level = predictions
        with post_head_float32(self.device.type):
            return decode_detections(
                flatten_dense_predictions(logits_per_level, self.num_classes).float(),
                flatten_dense_predictions(deltas_per_level, 4).float(),
                Boxes.cat(anchor_boxes).tensor,
                [len(boxes) for boxes in anchor_boxes],
                images.image_sizes,
                self.box2box_transform,
                score_thresh=self.test_score_thresh,
                topk_candidates=self.test_topk_candidates,
                nms_thresh=self.test_nms_thresh,
                max_detections_per_image=self.max_detections_per_image,
                soft_nms_settings=self.soft_nms,
            )

    @torch.no_grad()
    def _visualize(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: tuple[list[Tensor], list[Tensor]],
        gt_instances: list[Instances],
    ) -> None:
        """``DenseDetector.visualize_training`` on the first image: its ground truth and best
        detections, drawn on the image un-normalised from the batch."""
        height, width = images.image_sizes[0]
        image = images.tensor[0, :, :height, :width] * self.pixel_std + self.pixel_mean
        detached = tuple([p.detach() for p in per_level] for per_level in predictions)
        results = self.forward_inference(images, features, detached)
        inputs = [{"image": image.cpu(), "instances": gt_instances[0].to("cpu")}]
        self.visualize_training(inputs, [results[0].to("cpu")])


def _check_pixel_statistics(pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
    if len(pixel_mean) != len(pixel_std):
        raise ValueError(
            f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
            "must have one value per image channel."
        )


def reduced_precision_layout(network_dtype: torch.dtype, device: str) -> bool:
    """Whether ``network_dtype`` (the resolved precision) on ``device`` switches channels-last
    on by itself: the network runs in reduced precision, whose convolutions are fastest in that
    layout.

    CPU: bfloat16 (or auto) where the CPU has native bf16, where channels-last makes bf16
    inference markedly faster still. CUDA: float16, bfloat16 or auto (tensor cores read NHWC:
    faster inference and training steps). Measured in docs/benchmarks.md
    (benchmarks/results/model_cpu_precision.md, model_gpu.md).
    """
    # A CPU only gets bfloat16 where it has native bf16 (resolve_precision refuses or falls
    # back to float32 elsewhere), so reduced precision there is always the fast kind.
    return network_dtype != torch.float32 and torch.device(device).type in ("cpu", "cuda")
