"""int8 post-training quantization of an exported ONNX model, for CPUs without native bf16.

    from retinanet_ext.export import export_model
    from retinanet_ext.export.quantize import quantize_onnx

    export_model(predictor, "model.onnx", "onnx")
    quantize_onnx("model.onnx", "model-int8.onnx", ["calib/"])   # images or folders of them
    ExportedModel("model-int8.onnx")("image.jpg")               # onnxruntime, as any .onnx

onnxruntime's static quantization (``onnxruntime.quantization.quantize_static``): weights
int8 per output channel, activations uint8 per tensor, their ranges calibrated (min/max) on
the network's inputs for the given images, prepared as the runtime prepares them (resized
to the model's test size). The result is QDQ ONNX (QuantizeLinear/DequantizeLinear pairs
around the convolutions), which onnxruntime runs with integer kernels (AVX2, AVX-512 VNNI,
AMX) and OpenVINO reads as well. Post-processing stays in the float32 numpy wrapper.

int8 changes the outputs by design: its cost is measured as AP on a held-out set
(``benchmarks/precision_accuracy.py --runtimes``), not by the float32 parity check of
:mod:`.verify`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from retinanet_ext.export.runtime import METADATA_KEY, ExportedModel, load_image_rgb

__all__ = ["IMAGE_SUFFIXES", "calibration_files", "quantize_onnx"]

logger = logging.getLogger(__name__)

#: Files taken from a calibration folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def calibration_files(paths: Sequence[str | os.PathLike], count: int) -> list[str]:
    """Image files from ``paths`` (files, or folders whose images are taken in name order),
    at most ``count`` of them, spread evenly over what was found.

    Raises:
        ValueError: a path that does not exist, or no image at all.
    """
    found: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise ValueError(f"calibration image {path}: no such file or folder")
    if not found:
        raise ValueError(f"no calibration images in {', '.join(map(os.fspath, paths))} "
                         f"(image files: {', '.join(IMAGE_SUFFIXES)})")
    if count < 1:
        raise ValueError(f"calibration image count {count}: at least 1 is needed")
    if len(found) > count:
        found = [found[i] for i in np.linspace(0, len(found) - 1, count).round().astype(int)]
    return found


class _Calibration:
    """onnxruntime's CalibrationDataReader: one preprocessed image per call."""

    def __init__(self, model: ExportedModel, images: Sequence[Any]) -> None:
        self.model = model
        self.images: Iterator[Any] = iter(images)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.images, None)
        if item is None:
            return None
        image_rgb, _ = load_image_rgb(item)  # ImageReadError names the file
        self.count += 1
        return {"images": self.model.preprocess(image_rgb)[None]}

    def __iter__(self):  # newer onnxruntime versions iterate the reader
        return iter(self.get_next, None)


class _FirstOnly(logging.Filter):
    """Lets each message through once: onnxruntime's quantizer warns for every node that
    shares a weight it cannot quantize per channel (e.g. GroupNorm's scale, tens of times)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quantize_onnx(source: str | os.PathLike, destination: str | os.PathLike,
                  calibration_images: Sequence[Any]) -> str:
    """Write an int8 copy of the exported float32 ONNX model ``source`` to ``destination``.

    Args:
        source: an ONNX file written by :func:`~retinanet_ext.export.export_model`.
        destination: the int8 model (metadata copied, with a ``quantization`` entry); written
            only when quantization succeeded (nothing half-written is left behind).
        calibration_images: what :func:`~retinanet_ext.export.runtime.load_image_rgb` takes
            (paths, arrays): the activation ranges are measured on them. A few dozen images
            like the deployment's are enough.

    Returns:
        ``destination`` as a string.

    Raises:
        ImportError: onnxruntime (or onnx) is not installed.
        ImageReadError: a calibration image cannot be read (the message names it).
        ValueError: no calibration images, or ``source`` is already quantized.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, destination = os.fspath(source), os.fspath(destination)
    images = list(calibration_images)
    if not images:
        raise ValueError("int8 quantization needs calibration images (none given)")
    model = ExportedModel(source, "onnxruntime")
    metadata = dict(model.metadata)
    if "quantization" in metadata:
        raise ValueError(f"{source} is already quantized ({metadata['quantization']['type']})")
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    partial = destination + ".partial"
    with tempfile.TemporaryDirectory(prefix="retinanet_ext_int8_") as work:
        prepared = os.path.join(work, "prepared.onnx")
        # shape inference and graph optimisations first, as onnxruntime recommends
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        reader = _Calibration(model, images)
        once = _FirstOnly()
        root = logging.getLogger()  # where onnxruntime.quantization logs
        root.addFilter(once)
        try:
            quantize_static(prepared, partial, reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            _stamp_quantization(partial, metadata, reader.count)
            os.replace(partial, destination)
        finally:
            root.removeFilter(once)
            if os.path.exists(partial):
                os.remove(partial)
    logger.info("Quantized %s to int8 (%d calibration images): %s", source, reader.count,
                destination)
    return destination


def _stamp_quantization(path: str, metadata: dict[str, Any], calibration_images: int) -> None:
    """Replace the metadata of the quantized model at ``path`` by the float model's
    ``metadata`` plus a ``quantization`` entry saying how it was quantized."""
    import onnx

    quantized = onnx.load(path)
    metadata["quantization"] = {
        "type": "int8",
        "scheme": "onnxruntime static QDQ: weights int8 per channel, activations "
                  "uint8 per tensor, min/max calibration",
        "calibration_images": calibration_images,
    }
    del quantized.metadata_props[:]
    quantized.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    onnx.save(quantized, path)

