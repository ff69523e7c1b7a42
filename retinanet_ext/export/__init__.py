"""Deployment: export to ONNX / TorchScript, run the exported file, check it against PyTorch.

    from retinanet_ext import Predictor
    from retinanet_ext.export import ExportedModel, export_model, verify_export

    predictor = Predictor("config.yaml", "model_final.pth")
    export_model(predictor, "model.onnx", "onnx")          # or "torchscript" -> model.ts
    print(verify_export(predictor, "model.onnx").format())  # parity with PyTorch
    detections = ExportedModel("model.onnx")("image.jpg")   # numpy + onnxruntime only

:mod:`.runtime` (what a deployment needs) imports only numpy and Pillow; the exporter
and the verification (torch) are imported when first used.
"""

from __future__ import annotations

from typing import Any

from retinanet_ext.export.runtime import Detections, ExportedModel, ImageReadError

__all__ = ["Detections", "EXPORT_FORMATS", "ExportedModel", "ImageReadError", "export_model",
           "verify_export"]

_LAZY = {"EXPORT_FORMATS": "exporter", "export_model": "exporter", "verify_export": "verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"retinanet_ext.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'retinanet_ext.export' has no attribute {name!r}")
