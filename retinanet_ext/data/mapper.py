"""Detectron2's ``DatasetMapper``, reading image files as the Predictor reads them.

Detectron2's mapper reads with ``detection_utils.read_image``: a truncated file raises, a
16-bit image is clipped at 255, a decompression bomb is decoded. :class:`ImageDatasetMapper`
reads with :func:`retinanet_ext.structures.read_image_file` instead (upright, every common
kind as 8-bit RGB, a truncated file as far as it goes, ``INPUT.MAX_IMAGE_PIXELS``) and does
the rest exactly as Detectron2's does; the :class:`~retinanet_ext.engine.Trainer` passes it
to ``build_detection_train_loader`` / ``build_detection_test_loader``. Only the read differs,
so no Pillow setting changes outside it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from retinanet_ext.data.validation import DatasetError
from retinanet_ext.structures import DEFAULT_MAX_IMAGE_PIXELS, ImageReadError, read_image_file

__all__ = ["ImageDatasetMapper"]

logger = logging.getLogger("retinanet_ext.data")


class ImageDatasetMapper(DatasetMapper):
    """``DatasetMapper`` whose images are read by :func:`~retinanet_ext.structures.read_image_file`.

    Args (beside ``DatasetMapper``'s):
        max_image_pixels: files declaring more pixels are refused before decoding (None: no
            limit); ``INPUT.MAX_IMAGE_PIXELS`` (0: None).
        skip_bad_images: in training, an image that cannot be read is skipped with a
            warning (Detectron2's ``MapDataset`` draws another one when a mapper returns
            None) instead of stopping the run; ``DATALOADER.SKIP_BAD_IMAGES``. Such images
            are normally found and dropped at start; this covers the ones only a full
            decode finds. In evaluation it always stops: skipping would change the result.
    """

    @configurable
    def __init__(self, is_train: bool, *,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 skip_bad_images: bool = False, **kwargs: Any) -> None:
        super().__init__(is_train, **kwargs)
        self.max_image_pixels = max_image_pixels
        self.skip_bad_images = skip_bad_images

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        arguments = super().from_config(cfg, is_train)
        arguments["max_image_pixels"] = cfg.INPUT.get(
            "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS) or None
        arguments["skip_bad_images"] = bool(cfg.DATALOADER.get("SKIP_BAD_IMAGES", False))
        return arguments

    def read_image(self, file_name: str) -> np.ndarray:
        """The image as an array in ``INPUT.FORMAT`` (Detectron2's conversion of an RGB image).

        Raises:
            ImageReadError: the file cannot be read, or is over the pixel limit.
        """
        read = read_image_file(file_name, max_pixels=self.max_image_pixels)
        if read.truncated:
            logger.debug("%s is truncated: read as far as it goes", file_name)
        return utils.convert_PIL_to_numpy(read.image, self.image_format)

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        """Detectron2's ``DatasetMapper.__call__`` with :meth:`read_image` as its reader."""
        try:
            image = self.read_image(dataset_dict["file_name"])
        except ImageReadError as error:
            if self.is_train and self.skip_bad_images:
                logger.warning("Skipped in training (DATALOADER.SKIP_BAD_IMAGES): %s", error)
                return None
            raise DatasetError(f"{error}. Drop such images with train_net.py "
                               "--skip-bad-images (DATALOADER.SKIP_BAD_IMAGES True).") from error
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified below
        utils.check_image_size(dataset_dict, image)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms,
                                      proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
