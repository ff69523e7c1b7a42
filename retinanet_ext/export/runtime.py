"""Run an exported retinanet_ext model without PyTorch: numpy + onnxruntime (or OpenVINO).

This file and ``retinanet_ext/structures.py`` need numpy and Pillow only, plus the runtime
you pick: copy the two beside a ``.onnx`` file for a deployment with neither torch nor
Detectron2 installed::

    from runtime import ExportedModel          # or: from retinanet_ext.export import ...
    model = ExportedModel("model.onnx")        # .onnx: onnxruntime; .ts: torch.jit
    dets = model("image.jpg")                  # Detections: boxes, scores, class_ids, ...

The exported graph (see :mod:`retinanet_ext.export.exporter`) takes
``images``: float32[N, 3, H, W], 0-255, in the model's ``input_format`` channel order, any
N, H, W; it normalises, pads to the size divisibility and returns the head's dense outputs,
``logits_<i>``: float32[N, A*K, H_i, W_i] and ``deltas_<i>``: float32[N, A*4, H_i, W_i] per
pyramid level i. This wrapper does the rest exactly as the PyTorch model does:

1. pre-processing: read (EXIF-rotated), resize the shortest edge to ``min_size_test``
   (longest at most ``max_size_test``; bilinear, as Detectron2's ``ResizeShortestEdge``),
   batch by padding with the pixel mean (0 after the graph's normalisation, as Detectron2
   pads normalised images);
2. post-processing, per image and level: candidates with score above ``score_thresh``, at
   most ``topk_candidates`` of them; decode against the level's anchors; class-wise NMS
   at ``nms_thresh``; the ``max_detections_per_image`` best; boxes scaled to the input
   image and clipped, empty ones dropped.

Everything it needs (class names, anchors, strides, thresholds, sizes) is read from the
exported file itself: ONNX ``metadata_props`` or TorchScript extra files, key
:data:`METADATA_KEY`, a JSON document.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

try:  # in the package: the same types that retinanet_ext.Predictor returns and raises
    from retinanet_ext.structures import Detections, ImageReadError, load_image_rgb
except ImportError:  # copied beside a model with structures.py, without retinanet_ext
    from structures import Detections, ImageReadError, load_image_rgb

__all__ = [
    "METADATA_KEY",
    "Detections",
    "ExportedModel",
    "ImageReadError",
    "grid_anchors",
    "load_image_rgb",
    "postprocess_image",
    "resize_shortest_edge",
    "resized_shape",
]

#: Key of the JSON document that the exporter writes into the model file.
METADATA_KEY = "retinanet_ext"
#: Candidates are preselected on logits this far below logit(threshold), then checked
#: exactly on the sigmoid (as :mod:`retinanet_ext.modeling.postprocess` does).
_LOGIT_MARGIN = 1e-3


# ---------------------------------------------------------------- images
def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): shortest edge to ``short_edge``, longest at most ``max_size``.

    The arithmetic of Detectron2's ``ResizeShortestEdge.get_output_shape``, repeated here
    so this file needs no Detectron2 (tests check they agree).
    """
    scale = short_edge * 1.0 / min(height, width)
    new_h, new_w = (short_edge * 1.0, scale * width) if height < width else (
        scale * height, short_edge * 1.0)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """np.ndarray[H, W, 3] uint8 resized by :func:`resized_shape`, PIL bilinear."""
    from PIL import Image

    new_h, new_w = resized_shape(image.shape[0], image.shape[1], short_edge, max_size)
    if (new_h, new_w) == image.shape[:2] or short_edge == 0:
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


# ---------------------------------------------------------------- post-processing
def grid_anchors(cell_anchors: np.ndarray, grid_size: tuple[int, int], stride: int,
                 offset: float) -> np.ndarray:
    """np.ndarray[H*W*A, 4] float32 anchors of one level (location-major, then the A cell
    anchors), equal to :func:`retinanet_ext.modeling.anchors.grid_anchors`."""
    height, width = grid_size
    shifts_x = (np.arange(width, dtype=np.float64) * stride + offset * stride).astype(np.float32)
    shifts_y = (np.arange(height, dtype=np.float64) * stride + offset * stride).astype(np.float32)
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1)
    return (shifts[:, None, :] + cell_anchors[None].astype(np.float32)).reshape(-1, 4)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _level_candidates(
    logits: np.ndarray, score_thresh: float, topk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor_idx, class_idx, scores) of one level: Tensor[R, K] logits -> at most ``topk``
    (anchor, class) pairs with sigmoid(logit) > score_thresh."""
    num_classes = logits.shape[1]
    flat = logits.reshape(-1)
    if score_thresh <= 0.0:
        candidates = np.arange(flat.size)
    elif score_thresh >= 1.0:
        candidates = np.zeros(0, dtype=np.int64)
    else:
        logit_thresh = math.log(score_thresh / (1.0 - score_thresh)) - _LOGIT_MARGIN
        candidates = np.flatnonzero(flat > logit_thresh)
    if candidates.size > topk:
        candidates = candidates[np.argpartition(flat[candidates], candidates.size - topk)[-topk:]]
    scores = _sigmoid(flat[candidates])
    above = scores > score_thresh
    candidates, scores = candidates[above], scores[above]
    return candidates // num_classes, candidates % num_classes, scores


def _decode(deltas: np.ndarray, anchors: np.ndarray, weights: Sequence[float],
            scale_clamp: float) -> np.ndarray:
    """Detectron2's ``Box2BoxTransform.apply_deltas`` in float32: (dx, dy, dw, dh) / weights
    relative to each anchor's centre and size -> XYXY."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + np.float32(0.5) * widths
    ctr_y = anchors[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = np.minimum(deltas[:, 2] / ww, np.float32(scale_clamp))
    dh = np.minimum(deltas[:, 3] / wh, np.float32(scale_clamp))
    pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
    pred_w, pred_h = np.exp(dw) * widths, np.exp(dh) * heights
    half_w, half_h = np.float32(0.5) * pred_w, np.float32(0.5) * pred_h
    return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h,
                     pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS of one class (torchvision's ``nms``): indices kept, best first."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0],
                                                                        boxes[rest, 0])
        height = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1],
                                                                         boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_thresh)]
    return np.asarray(keep, dtype=np.int64)


def _batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 iou_thresh: float) -> np.ndarray:
    """Class-wise NMS: indices kept, by descending score."""
    keep = [np.flatnonzero(classes == c)[_nms(boxes[classes == c], scores[classes == c],
                                               iou_thresh)] for c in np.unique(classes)]
    keep = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def postprocess_image(
    logits_per_level: Sequence[np.ndarray],
    deltas_per_level: Sequence[np.ndarray],
    meta: dict[str, Any],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    score_thresh: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from its dense outputs.

    Args:
        logits_per_level: per level, np.ndarray[A*K, H_i, W_i].
        deltas_per_level: per level, np.ndarray[A*4, H_i, W_i].
        meta: the exported model's metadata (anchors, strides, thresholds, weights).
        input_size: (h, w) of the resized image the network saw (before padding).
        output_size: (h, w) of the original image: boxes are scaled to it and clipped.
        score_thresh: overrides ``meta["score_thresh"]``.

    Returns:
        boxes np.ndarray[D, 4] float32 XYXY, scores [D] float32, class ids [D] int64.
    """
    num_classes = meta["num_classes"]
    thresh = meta["score_thresh"] if score_thresh is None else score_thresh
    all_boxes, all_scores, all_classes = [], [], []
    for level, (logits, deltas) in enumerate(zip(logits_per_level, deltas_per_level,
                                                 strict=True)):
        height, width = logits.shape[-2:]
        # [A*D, H, W] -> [H, W, A, D] -> [H*W*A, D]: location-major, as the anchors.
        logits = logits.reshape(-1, num_classes, height, width).transpose(2, 3, 0, 1)
        deltas = deltas.reshape(-1, 4, height, width).transpose(2, 3, 0, 1).reshape(-1, 4)
        anchor_idx, class_idx, scores = _level_candidates(
            logits.reshape(-1, num_classes), thresh, meta["topk_candidates"])
        anchors = grid_anchors(np.asarray(meta["cell_anchors"][level], dtype=np.float32),
                               (height, width), meta["strides"][level], meta["anchor_offset"])
        all_boxes.append(_decode(deltas[anchor_idx], anchors[anchor_idx],
                                 meta["box2box_weights"], meta["scale_clamp"]))
        all_scores.append(scores)
        all_classes.append(class_idx)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    classes = np.concatenate(all_classes).astype(np.int64)
    keep = _batched_nms(boxes, scores, classes, meta["nms_thresh"])
    keep = keep[: meta["max_detections_per_image"]]
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    # Detectron2's detector_postprocess: scale to the output size, clip, drop empty boxes.
    boxes[:, 0::2] *= np.float32(output_size[1] / input_size[1])
    boxes[:, 1::2] *= np.float32(output_size[0] / input_size[0])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, output_size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, output_size[0])
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return boxes[nonempty], scores[nonempty], classes[nonempty]


# ---------------------------------------------------------------- backends
class _OnnxRuntimeBackend:
    """An ``.onnx`` file run by onnxruntime on its CPU provider (or those given)."""

    name = "onnxruntime"

    def __init__(self, path: str, providers: Sequence[str] | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # No busy-waiting between runs: spinning threads would take the CPU from whatever
        # the application (or a PyTorch model beside it) does between two images.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            path, options, providers=list(providers or ["CPUExecutionProvider"]))
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = _parse_metadata(props.get(METADATA_KEY), path)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"images": images})


class _OpenVINOBackend:
    """An ``.onnx`` file or an OpenVINO IR ``.xml`` (see ``convert_to_openvino``) run by
    OpenVINO on the CPU."""

    name = "openvino"

    def __init__(self, path: str, device: str = "CPU") -> None:
        import openvino

        core = openvino.Core()
        model = core.read_model(path)
        if model.has_rt_info(METADATA_KEY):
            text = str(model.get_rt_info(METADATA_KEY))
        else:  # an .onnx file: its metadata_props, read with the onnx package
            import onnx

            props = {p.key: p.value for p in onnx.load(path, load_external_data=False)
                     .metadata_props}
            text = props.get(METADATA_KEY)
        self.metadata = _parse_metadata(text, path)
        # float32 throughout: OpenVINO would otherwise pick bf16 on CPUs that have it.
        self.compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(images)
        return [np.asarray(result[output]) for output in self.compiled.outputs]


class _TorchScriptBackend:
    """A ``.ts``/``.pt`` TorchScript file (needs torch, not Detectron2)."""

    name = "torchscript"

    def __init__(self, path: str, device: str = "cpu") -> None:
        import torch

        extra = {METADATA_KEY + ".json": ""}
        try:
            self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a TorchScript model: {error}") from error
        self.metadata = _parse_metadata(extra[METADATA_KEY + ".json"] or None, path)
        self.device = device
        self.torch = torch

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            outputs = self.module(self.torch.from_numpy(images).to(self.device))
        return [output.cpu().numpy() for output in outputs]


def _parse_metadata(text: Any, path: str) -> dict[str, Any]:
    if not text:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: export it with "
                         "`retinanet-ext export`")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({error})") from error
    needed = {"thing_classes", "input_format", "num_classes", "strides", "cell_anchors",
              "anchor_offset", "box2box_weights", "scale_clamp", "score_thresh",
              "topk_candidates", "nms_thresh", "max_detections_per_image", "min_size_test",
              "max_size_test", "pixel_mean"}
    missing = sorted(needed - set(meta))
    if missing:
        raise ValueError(f"{path}: its '{METADATA_KEY}' metadata lacks {missing}")
    return meta


_BACKENDS = {"onnxruntime": _OnnxRuntimeBackend, "openvino": _OpenVINOBackend,
             "torchscript": _TorchScriptBackend}


def _default_backend(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".xml":
        return "openvino"
    return "onnxruntime" if suffix == ".onnx" else "torchscript"


class ExportedModel:
    """An exported model with the same call as :class:`retinanet_ext.Predictor`.

    Args:
        path: ``.onnx`` (onnxruntime by default), ``.xml`` (OpenVINO IR), or a TorchScript
            file (``.ts``/``.pt``).
        backend: ``onnxruntime``, ``openvino`` or ``torchscript``; by default from the suffix.
        score_thresh: default score threshold (else the one saved at export).
        batch_size: images per run of the network when a list is given.
        **backend_kwargs: passed to the backend (``providers`` for onnxruntime,
            ``device`` for OpenVINO and TorchScript).
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, *,
                 score_thresh: float | None = None, batch_size: int = 1,
                 **backend_kwargs: Any) -> None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path} does not exist")
        backend = backend or _default_backend(path)
        if backend not in _BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {sorted(_BACKENDS)}")
        self.path = path
        self.backend = _BACKENDS[backend](path, **backend_kwargs)
        self.metadata = self.backend.metadata
        self.class_names = self.metadata["thing_classes"]
        self.score_thresh = self.metadata["score_thresh"] if score_thresh is None else (
            score_thresh)
        self.batch_size = max(1, int(batch_size))

    #: An input as (RGB uint8 array, path or None); see :func:`load_image_rgb`.
    load = staticmethod(load_image_rgb)

    def __call__(self, images: Any, *, score_thresh: float | None = None,
                 rgb: bool = False) -> Detections | list[Detections]:
        """Detections of one image, or of each image of a list (see :func:`load_image_rgb`
        for the input kinds; ``rgb`` for numpy arrays in RGB order)."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        thresh = self.score_thresh if score_thresh is None else score_thresh
        results = []
        for start in range(0, len(items), self.batch_size):
            loaded = [load_image_rgb(item, rgb) for item in items[start:start + self.batch_size]]
            results.extend(self._run_batch(loaded, thresh))
        return results[0] if single else results

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 -> float32[3, h, w] in the model's channel order, resized."""
        image = image_rgb if self.metadata["input_format"] == "RGB" else image_rgb[:, :, ::-1]
        image = resize_shortest_edge(np.ascontiguousarray(image), self.metadata["min_size_test"],
                                     self.metadata["max_size_test"])
        return image.astype(np.float32).transpose(2, 0, 1)

    def _run_batch(self, loaded: list[tuple[np.ndarray, str | None]],
                   score_thresh: float) -> list[Detections]:
        tensors = [self.preprocess(image) for image, _ in loaded]
        height = max(t.shape[1] for t in tensors)
        width = max(t.shape[2] for t in tensors)
        mean = np.asarray(self.metadata["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
        batch = np.empty((len(tensors), 3, height, width), dtype=np.float32)
        batch[:] = mean  # normalised to exactly 0 by the graph, as Detectron2 pads
        for i, tensor in enumerate(tensors):
            batch[i, :, : tensor.shape[1], : tensor.shape[2]] = tensor
        outputs = self.backend.run(batch)
        num_levels = len(outputs) // 2
        results = []
        for i, ((image, file_name), tensor) in enumerate(zip(loaded, tensors, strict=True)):
            boxes, scores, classes = postprocess_image(
                [out[i] for out in outputs[:num_levels]], [out[i] for out in outputs[num_levels:]],
                self.metadata, tensor.shape[1:], image.shape[:2], score_thresh)
            names = [self.class_names[c] if c < len(self.class_names) else f"class_{c}"
                     for c in classes.tolist()]
            results.append(Detections(boxes, scores, classes, names, image.shape[:2], file_name))
        return results
