"""``retinanet_ext.Predictor``: a trained model from a config and a checkpoint, one call
from images to boxes, scores and class names::

    from retinanet_ext import Predictor
    predictor = Predictor("configs/retinanet_R18_FPN_quick.yaml", "output/model_final.pth")
    dets = predictor("cells.jpg")                  # or a BGR array, a PIL image, a list
    for box, name, score in zip(dets.boxes, dets.class_names, dets.scores):
        print(name, f"{score:.2f}", box)           # XYXY in the input image's pixels

Pre-processing is Detectron2's ``DefaultPredictor``'s: the image in ``INPUT.FORMAT``
channel order, its shortest edge resized to ``INPUT.MIN_SIZE_TEST`` (the longest at most
``INPUT.MAX_SIZE_TEST``); boxes come back in the input image's pixels. Class names come
from the metadata saved in the checkpoint (:mod:`retinanet_ext.engine.metadata`), so a
model trained on a custom dataset names its classes in a process where that dataset is
not registered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode

from retinanet_ext.engine import load_config, load_weights, resolve_device
from retinanet_ext.engine.metadata import ModelMetadata, resolve_metadata
from retinanet_ext.structures import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Detections,
    ImageReadError,
    load_image_rgb,
)

__all__ = ["Detections", "ImageReadError", "Predictor"]

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | np.ndarray | Any  # Any: a PIL image


class Predictor:
    """A RetinaNet model ready for inference on CPU or CUDA.

    Args:
        config: a config file path or a CfgNode (retinanet_ext's keys included, e.g. from
            :func:`retinanet_ext.engine.load_config`).
        weights: the checkpoint; by default the config's ``MODEL.WEIGHTS``.
        opts: config overrides, ``["KEY", "VALUE", ...]`` (with a config file).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; by default ``MODEL.DEVICE`` (CPU with a
            warning where CUDA is asked for but absent).
        score_thresh: keep detections scoring above this; by default
            ``MODEL.RETINANET.SCORE_THRESH_TEST``.
        batch_size: images per forward pass when a list is given.

    Raises:
        retinanet_ext.engine.ConfigError / CheckpointError: bad config or checkpoint.
    """

    def __init__(
        self,
        config: str | os.PathLike | CfgNode,
        weights: str | None = None,
        *,
        opts: Sequence[str] | None = None,
        device: str | None = None,
        score_thresh: float | None = None,
        batch_size: int = 8,
    ) -> None:
        from detectron2.modeling import build_model

        if isinstance(config, CfgNode):
            cfg = config.clone()
            if opts:
                cfg.merge_from_list(list(opts))
        else:
            cfg = load_config(os.fspath(config), list(opts or []))
        cfg.defrost()
        if weights is not None:
            cfg.MODEL.WEIGHTS = os.fspath(weights)
        if device is not None:
            cfg.MODEL.DEVICE = device
        resolve_device(cfg)
        cfg.freeze()
        model = build_model(cfg).eval()
        entries = load_weights(model, cfg.MODEL.WEIGHTS)
        metadata = resolve_metadata(
            cfg, entries if isinstance(entries, dict) else None, cfg.MODEL.WEIGHTS)
        if metadata.input_format != cfg.INPUT.FORMAT and metadata.thing_classes:
            logger.warning("%s was trained on %s images but INPUT.FORMAT is %s: using %s",
                           cfg.MODEL.WEIGHTS, metadata.input_format, cfg.INPUT.FORMAT,
                           cfg.INPUT.FORMAT)
        self._setup(cfg, model, metadata, score_thresh, batch_size)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        cfg: CfgNode,
        class_names: Sequence[str] | None = None,
        *,
        score_thresh: float | None = None,
        batch_size: int = 8,
    ) -> Predictor:
        """A Predictor around a model already in memory (e.g. just trained), no checkpoint.

        ``model`` is used as it is (and put in eval mode); ``class_names`` default to
        ``class_<id>``; ``cfg`` gives the test resize, input format and score threshold.
        """
        self = cls.__new__(cls)
        metadata = ModelMetadata(list(class_names or []), cfg.INPUT.FORMAT, [])
        self._setup(cfg, model.eval(), metadata, score_thresh, batch_size)
        return self

    def _setup(self, cfg: CfgNode, model: torch.nn.Module, metadata: ModelMetadata,
               score_thresh: float | None, batch_size: int) -> None:
        from detectron2.data import transforms as T

        self.cfg = cfg
        self.model = model
        self.metadata = metadata
        self.class_names = metadata.class_names(cfg.MODEL.RETINANET.NUM_CLASSES)
        self.input_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.score_thresh = (cfg.MODEL.RETINANET.SCORE_THRESH_TEST if score_thresh is None
                             else float(score_thresh))
        self.batch_size = max(1, int(batch_size))
        # INPUT.MAX_IMAGE_PIXELS, where the config has it (one saved before it existed: the default)
        self.max_pixels = cfg.INPUT.get("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS) or None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        score_thresh: float | None = None,
        rgb: bool = False,
    ) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images.

        Args:
            images: a path, a numpy HxWx3 uint8 array (BGR, as ``cv2.imread`` gives, or RGB
                with ``rgb=True``), a PIL image, or a list of these (run in batches of
                ``batch_size``).
            score_thresh: overrides the predictor's threshold for this call.
            rgb: numpy arrays are in RGB order.

        Returns:
            One :class:`Detections` (boxes XYXY in input pixels, scores, class ids, class
            names), or a list of them for a list input.

        Raises:
            ImageReadError: an input cannot be read (names the file).
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        thresh = self.score_thresh if score_thresh is None else float(score_thresh)
        results: list[Detections] = []
        for start in range(0, len(items), self.batch_size):
            loaded = [self.load(item, rgb, max_pixels=self.max_pixels)
                      for item in items[start:start + self.batch_size]]
            results.extend(self._predict_batch(loaded, thresh))
        return results[0] if single else results

    @staticmethod
    def load(image: ImageInput, rgb: bool = False, *,
             max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str | None]:
        """An input as np.ndarray[H, W, 3] uint8 RGB and its path (None if not a path).

        Files are read as training reads them (:func:`~retinanet_ext.structures.read_image_file`:
        EXIF orientation applied, as Detectron2's ``read_image`` does; every common kind as
        8-bit RGB; a truncated file as far as it goes, with a warning; more than
        ``max_pixels`` refused before decoding).
        """
        return load_image_rgb(image, rgb, max_pixels=max_pixels)

    def preprocess(self, image_rgb: np.ndarray) -> dict[str, Any]:
        """The model's input dict for one RGB uint8 image (``DefaultPredictor``'s steps)."""
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def _predict_batch(self, loaded: list[tuple[np.ndarray, str | None]],
                       score_thresh: float) -> list[Detections]:
        inputs = [self.preprocess(image) for image, _ in loaded]
        saved_thresh = self.model.test_score_thresh
        self.model.test_score_thresh = score_thresh
        try:
            with torch.no_grad():
                outputs = self.model(inputs)
        finally:
            self.model.test_score_thresh = saved_thresh
        results = []
        for (image, file_name), output in zip(loaded, outputs, strict=True):
            instances = output["instances"].to("cpu")
            class_ids = instances.pred_classes.numpy().astype(np.int64)
            results.append(Detections(
                boxes=instances.pred_boxes.tensor.float().numpy(),
                scores=instances.scores.float().numpy(),
                class_ids=class_ids,
                class_names=[self.class_names[c] for c in class_ids.tolist()],
                image_size=tuple(image.shape[:2]),
                file_name=file_name,
            ))
        return results
