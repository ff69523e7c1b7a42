"""Check an exported model against PyTorch: same detections on the same images.

For each image: the same number of detections and the same classes, boxes within
``box_tol`` pixels, scores within ``score_tol`` (float32 defaults 1e-2 px and 1e-4). The
dense outputs of the network (logits, deltas) are compared too, so a verification means
something even on images where the model detects nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retinanet_ext.export.runtime import Detections, ExportedModel

if TYPE_CHECKING:
    from retinanet_ext.predictor import Predictor

__all__ = ["ImageParity", "VerifyReport", "compare_detections", "sample_images",
           "verify_export"]


@dataclass
class ImageParity:
    """The comparison of one image."""

    name: str
    input_size: tuple[int, int]
    network_size: tuple[int, int]
    num_reference: int
    num_exported: int
    classes_equal: bool
    max_box_diff: float
    max_score_diff: float
    max_dense_diff: float

    def passed(self, box_tol: float, score_tol: float) -> bool:
        return (self.num_reference == self.num_exported and self.classes_equal
                and self.max_box_diff <= box_tol and self.max_score_diff <= score_tol)


@dataclass
class VerifyReport:
    """Per-image parity and the verdict."""

    backend: str
    box_tol: float
    score_tol: float
    images: list[ImageParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(image.passed(self.box_tol, self.score_tol) for image in self.images)

    @property
    def num_detections(self) -> int:
        return sum(image.num_reference for image in self.images)

    def format(self) -> str:
        lines = [f"verification against PyTorch ({self.backend}; boxes within {self.box_tol} px,"
                 f" scores within {self.score_tol}):",
                 "  image                   input      network   dets torch/export  classes"
                 "  max |box| px  max |score|  max |dense|"]
        for p in self.images:
            lines.append(
                f"  {p.name[:22]:<22} {p.input_size[0]:>4}x{p.input_size[1]:<5} "
                f"{p.network_size[0]:>4}x{p.network_size[1]:<5} {p.num_reference:>6}/"
                f"{p.num_exported:<6}       {'same' if p.classes_equal else 'DIFFER':<7} "
                f"{p.max_box_diff:>12.2e} {p.max_score_diff:>12.2e} {p.max_dense_diff:>12.2e}"
                f"  {'ok' if p.passed(self.box_tol, self.score_tol) else 'FAIL'}")
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"  {verdict}: {len(self.images)} images, {self.num_detections} detections"
                     " compared")
        if self.passed and self.num_detections == 0:
            lines.append("  note: no detections to compare (only the dense outputs were): "
                         "give real images with --verify-input or a lower score threshold")
        return "\n".join(lines)


def compare_detections(reference: Detections, exported: Detections) -> tuple[bool, float, float]:
    """(classes equal, max box diff px, max score diff) of two detection lists.

    Detections are paired in order of score; where near-equal scores come in a different
    order, each reference detection is paired with the unused exported one of its class
    with the closest box. Unequal counts give (False, inf, inf).
    """
    if len(reference) != len(exported):
        return False, float("inf"), float("inf")
    if len(reference) == 0:
        return True, 0.0, 0.0
    pairs = np.arange(len(reference))
    if not np.array_equal(reference.class_ids, exported.class_ids) or (
            np.abs(reference.boxes - exported.boxes).max() > 1.0):
        pairs = _pair_by_box(reference, exported)
        if pairs is None:
            return False, float("inf"), float("inf")
    box_diff = float(np.abs(reference.boxes - exported.boxes[pairs]).max())
    score_diff = float(np.abs(reference.scores - exported.scores[pairs]).max())
    return True, box_diff, score_diff


def _pair_by_box(reference: Detections, exported: Detections) -> np.ndarray | None:
    used = np.zeros(len(exported), dtype=bool)
    pairs = np.empty(len(reference), dtype=np.int64)
    for i in range(len(reference)):
        candidates = np.flatnonzero((exported.class_ids == reference.class_ids[i]) & ~used)
        if candidates.size == 0:
            return None
        diffs = np.abs(exported.boxes[candidates] - reference.boxes[i]).max(axis=1)
        pairs[i] = candidates[np.argmin(diffs)]
        used[pairs[i]] = True
    return pairs


def sample_images(sizes: Sequence[tuple[int, int]] = ((480, 640), (333, 517), (600, 401)),
                  seed: int = 0) -> list[np.ndarray]:
    """Images (RGB uint8) of several sizes and aspect ratios: smooth noise with bright
    rectangles and discs, something for a detector to respond to."""
    rng = np.random.default_rng(seed)
    images = []
    for height, width in sizes:
        coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        image = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()
        yy, xx = np.mgrid[:height, :width]
        for _ in range(8):
            cx, cy = rng.integers(0, width), rng.integers(0, height)
            radius = int(rng.integers(10, max(11, min(height, width) // 4)))
            color = rng.integers(0, 256, 3, dtype=np.uint8)
            if rng.random() < 0.5:
                image[max(0, cy - radius):cy + radius, max(0, cx - radius):cx + radius] = color
            else:
                image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = color
        images.append(image)
    return images


def _dense_diff(predictor: Predictor, exported: ExportedModel, image_rgb: np.ndarray) -> float:
    """Max |difference| of the network's dense outputs (PyTorch vs exported)."""
    import torch

    from retinanet_ext.export.exporter import DenseOutputs

    tensor = exported.preprocess(image_rgb)[None]
    with torch.no_grad():
        reference = DenseOutputs(predictor.model).eval()(
            torch.from_numpy(tensor).to(predictor.device))
    outputs = exported.backend.run(tensor)
    return max(float(np.abs(ref.float().cpu().numpy() - out).max())
               for ref, out in zip(reference, outputs, strict=True))


def verify_export(
    predictor: Predictor,
    path: str,
    images: Sequence[Any] | None = None,
    *,
    backend: str | None = None,
    box_tol: float = 1e-2,
    score_tol: float = 1e-4,
    score_thresh: float | None = None,
) -> VerifyReport:
    """Run ``predictor`` (PyTorch) and the exported file at ``path`` on ``images`` (any
    input the predictor takes; by default :func:`sample_images`) and compare."""
    exported = ExportedModel(path, backend, score_thresh=score_thresh)
    report = VerifyReport(exported.backend.name, box_tol, score_tol)
    images = list(images) if images is not None else sample_images()
    for index, item in enumerate(images):
        image_rgb, file_name = predictor.load(item)
        reference = predictor(image_rgb, rgb=True, score_thresh=score_thresh)
        result = exported(image_rgb, rgb=True, score_thresh=score_thresh)
        classes_equal, box_diff, score_diff = compare_detections(reference, result)
        report.images.append(ImageParity(
            name=os.path.basename(file_name) if file_name else f"sample_{index}",
            input_size=tuple(image_rgb.shape[:2]),
            network_size=tuple(exported.preprocess(image_rgb).shape[1:]),
            num_reference=len(reference), num_exported=len(result),
            classes_equal=classes_equal, max_box_diff=box_diff, max_score_diff=score_diff,
            max_dense_diff=_dense_diff(predictor, exported, image_rgb),
        ))
    return report
