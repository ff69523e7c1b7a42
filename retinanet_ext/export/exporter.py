"""Export a trained model to ONNX or TorchScript, with what the runtime needs inside.

What is exported: :class:`DenseOutputs`, the network from raw pixels to the head's dense
outputs (normalisation, zero padding to the backbone's size divisibility, backbone, head),
with dynamic batch, height and width. Post-processing (candidate selection, decoding,
class-wise NMS, detections per image) and the resize run in the small numpy wrapper
:class:`~retinanet_ext.export.runtime.ExportedModel`, because they are data-dependent
(a different number of candidates per image and level): in the graph they would need
ONNX's NonMaxSuppression with its own semantics (and TorchScript of Detectron2's
``Instances``), where the wrapper repeats PyTorch's steps and is checked against them
(:mod:`retinanet_ext.export.verify`). Anchors are not exported either: the wrapper
rebuilds them from the saved cell anchors, strides and offset.

ONNX: ``torch.onnx.export(dynamo=True)``, opset 18 by default, one file (weights inside),
metadata in ``metadata_props``. TorchScript: ``torch.jit.trace`` (sizes are traced as
tensors, so any input size works), metadata as the extra file ``retinanet_ext.json``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet_ext.export.runtime import METADATA_KEY

if TYPE_CHECKING:
    from retinanet_ext.predictor import Predictor

__all__ = ["DenseOutputs", "EXPORT_FORMATS", "export_metadata", "export_model"]

logger = logging.getLogger(__name__)

#: format name -> default file suffix.
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
#: Version of the exported metadata document.
EXPORT_FORMAT_VERSION = 1


class DenseOutputs(nn.Module):
    """The exported network: images -> per-level class logits and box deltas.

    ``forward(images)``: ``images`` Tensor[N, 3, H, W] float32, 0-255, in the model's
    ``input_format``; returns ``(logits_0, ..., logits_{L-1}, deltas_0, ..., deltas_{L-1})``
    with logits Tensor[N, A*K, H_i, W_i] and deltas Tensor[N, A*4, H_i, W_i], exactly the
    model's ``head`` outputs for the same batch (as ``RetinaNetExt.preprocess_image``
    normalises and pads it).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.head_in_features = list(model.head_in_features)
        self.size_divisibility = int(model.backbone.size_divisibility)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        images = (images - self.pixel_mean) / self.pixel_std
        divisor = self.size_divisibility
        if divisor > 1:  # pad right and bottom with 0, as ImageList.from_tensors does
            height, width = images.shape[-2], images.shape[-1]
            images = F.pad(images, (0, (divisor - width % divisor) % divisor,
                                    0, (divisor - height % divisor) % divisor))
        features = self.backbone(images)
        logits, deltas = self.head([features[name] for name in self.head_in_features])
        return (*logits, *deltas)


def export_metadata(predictor: Predictor) -> dict[str, Any]:
    """Everything :class:`~retinanet_ext.export.runtime.ExportedModel` needs, as plain JSON
    types: class names, input conventions, anchors, box coding and inference settings."""
    import detectron2

    import retinanet_ext

    model, cfg = predictor.model, predictor.cfg
    generator = model.anchor_generator
    transform = model.box2box_transform
    num_levels = len(model.head_in_features)
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "thing_classes": list(predictor.class_names),
        "input_format": cfg.INPUT.FORMAT,
        "datasets": list(predictor.metadata.datasets),
        "num_classes": int(model.num_classes),
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "size_divisibility": int(model.backbone.size_divisibility),
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "strides": [int(s) for s in generator.strides][:num_levels],
        "cell_anchors": [cell.tolist() for cell in generator.cell_anchors][:num_levels],
        "anchor_offset": float(generator.offset),
        "box2box_weights": [float(w) for w in transform.weights],
        "scale_clamp": float(transform.scale_clamp),
        "score_thresh": float(predictor.score_thresh),
        "topk_candidates": int(model.test_topk_candidates),
        "nms_thresh": float(model.test_nms_thresh),
        "max_detections_per_image": int(model.max_detections_per_image),
        "inputs": "images: float32[N, 3, H, W], 0-255, input_format channel order",
        "outputs": [f"logits_{i}" for i in range(num_levels)]
        + [f"deltas_{i}" for i in range(num_levels)],
        "weights": os.path.basename(cfg.MODEL.WEIGHTS),
        "exported_with": {"torch": torch.__version__, "detectron2": detectron2.__version__,
                          "retinanet_ext": retinanet_ext.__version__},
    }


def _example_input(predictor: Predictor) -> Tensor:
    """A float32[1, 3, H, W] batch at the config's test size (H != W, not divisible)."""
    short = int(predictor.cfg.INPUT.MIN_SIZE_TEST) or 320
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, short, short * 4 // 3 + 1, generator=generator) * 255


def _export_onnx(module: DenseOutputs, example: Tensor, path: str, meta: dict,
                 opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    program = torch.onnx.export(
        module, (example,), dynamo=True, opset_version=opset, input_names=["images"],
        output_names=meta["outputs"], dynamic_shapes={"images": {0: batch, 2: height,
                                                                 3: width}},
        verbose=False,
    )
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    program.save(path, external_data=False)


def _export_torchscript(module: DenseOutputs, example: Tensor, path: str, meta: dict) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    torch.jit.save(traced, path, _extra_files={METADATA_KEY + ".json": json.dumps(meta)})


def export_model(predictor: Predictor, path: str | os.PathLike, format: str = "onnx", *,
                 opset: int = 18) -> str:
    """Write ``predictor``'s model as ``format`` (``onnx`` or ``torchscript``) to ``path``.

    The model is exported in float32 on the CPU. Returns the path written. The file
    holds the network and the metadata of :func:`export_metadata`; run it with
    :class:`~retinanet_ext.export.runtime.ExportedModel`.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}: expected one of "
                         f"{sorted(EXPORT_FORMATS)}")
    if format == "onnx" and opset < 17:
        raise ValueError(f"ONNX opset {opset}: 17 or later is needed")
    if getattr(predictor.model, "soft_nms", None):
        raise ValueError("the exported runtime does hard NMS only: export with "
                         "MODEL.RETINANET_EXT.SOFT_NMS_METHOD '' (Soft-NMS is not exported)")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = export_metadata(predictor)
    # float32 in the default memory layout: channels-last weights (PRECISION auto or bfloat16
    # on a CPU with native bf16 switches them on) make torch.export fix the batch size at 1.
    module = DenseOutputs(predictor.model).to("cpu", memory_format=torch.contiguous_format)
    module = module.float().eval()
    example = _example_input(predictor)
    partial = path + ".partial"  # an interrupted export leaves no half-written model behind
    try:
        if format == "onnx":
            _export_onnx(module, example, partial, meta, opset)
        else:
            _export_torchscript(module, example, partial, meta)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
        predictor.model.to(predictor.cfg.MODEL.DEVICE)  # DenseOutputs shares its modules
        if getattr(predictor.model, "channels_last", False):  # and their layout
            for part in (predictor.model.backbone, predictor.model.head):
                part.to(memory_format=torch.channels_last)
    logger.info("Exported %s to %s", format, path)
    return path
