"""COCO instances JSON (boxes only) as a registered Detectron2 dataset."""

from __future__ import annotations

import json
import os
from typing import Any

from detectron2.structures import BoxMode

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError


def _require(condition: bool, json_file: str, expected: str, found: Any) -> None:
    if not condition:
        raise DatasetError(
            f"{json_file}: not a valid COCO instances file: expected {expected}, found "
            f"{found!r:.200}."
        )


def load_coco_records(
    json_file: str, image_root: str
) -> tuple[list[dict[str, Any]], list[str], dict[int, int]]:
    """Read a COCO instances JSON into unvalidated Detectron2 dataset dicts.

    Category ids are mapped to contiguous ids ``0..K-1`` in increasing id order and
    class names follow the same order, exactly as Detectron2's ``load_coco_json`` does,
    so a model trained here is evaluated correctly against the original file. All
    categories in the file count, used or not (coco128 declares 80 and uses 71). Images
    without annotations are kept. Boxes stay in COCO's ``XYWH_ABS``; crowd regions keep
    ``iscrowd=1``. Segmentations and keypoints are not loaded (RetinaNet uses boxes).
    An image without ``width``/``height`` gets them from the image file at validation.

    Returns:
        (records, thing_classes, thing_dataset_id_to_contiguous_id)

    Raises:
        DatasetError: the file is missing, is not JSON, or is not COCO-shaped; the message
            names the file and the entry at fault.
    """
    data = _read_coco_json(json_file)
    thing_classes, id_map = _read_categories(data["categories"], json_file)
    records_by_id = _read_images(data["images"], json_file, image_root)
    _add_annotations(data["annotations"], json_file, records_by_id, id_map)
    # Sorted by image id, as load_coco_json does, for reproducible order.
    try:
        image_ids = sorted(records_by_id)
    except TypeError:  # mixed id types: still a stable order
        image_ids = sorted(records_by_id, key=str)
    records = [records_by_id[i] for i in image_ids]
    return records, thing_classes, id_map


def _read_coco_json(json_file: str) -> dict[str, Any]:
    """The parsed file, checked to hold lists of images, annotations and categories."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as error:
        raise DatasetError(f"COCO annotation file not found: {json_file}.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_file}: not valid JSON: {error}.") from error
    _require(isinstance(data, dict), json_file, "a JSON object at the top level", type(data))
    for key in ("images", "annotations", "categories"):
        _require(
            isinstance(data.get(key), list), json_file, f"a list under '{key}'", data.get(key)
        )
    _require(len(data["categories"]) > 0, json_file, "at least one category", [])
    return data


def _read_categories(
    categories: list[Any], json_file: str
) -> tuple[list[str], dict[int, int]]:
    """Class names and the category id -> contiguous id map, both in increasing id order."""
    names_by_id: dict[int, str] = {}
    for category in categories:
        _require(
            isinstance(category, dict)
            and isinstance(category.get("id"), int)
            and isinstance(category.get("name"), str),
            json_file, "each category to have an integer 'id' and a string 'name'", category,
        )
        _require(category["id"] not in names_by_id, json_file, "unique category ids",
                 category)
        names_by_id[category["id"]] = category["name"]
    category_ids = sorted(names_by_id)
    thing_classes = [names_by_id[i] for i in category_ids]
    id_map = {category_id: index for index, category_id in enumerate(category_ids)}
    return thing_classes, id_map


def _read_images(
    images: list[Any], json_file: str, image_root: str
) -> dict[Any, dict[str, Any]]:
    """One record without annotations per image, keyed by image id."""
    records_by_id: dict[Any, dict[str, Any]] = {}
    for image in images:
        _require(
            isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str),
            json_file, "each image to have an 'id' and a string 'file_name'", image,
        )
        _require(image["id"] not in records_by_id, json_file, "unique image ids", image)
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": image["id"],
            "annotations": [],
            SOURCE_KEY: f"{json_file} (image id {image['id']}, {image['file_name']})",
        }
        if "width" in image and "height" in image:
            record["width"], record["height"] = image["width"], image["height"]
        records_by_id[image["id"]] = record
    return records_by_id


def _add_annotations(
    annotations: list[Any],
    json_file: str,
    records_by_id: dict[Any, dict[str, Any]],
    id_map: dict[int, int],
) -> None:
    """Append each annotation's box to its image's record, with contiguous category ids."""
    category_ids = list(id_map)
    for annotation in annotations:
        _require(
            isinstance(annotation, dict) and "image_id" in annotation,
            json_file, "each annotation to have an 'image_id'", annotation,
        )
        where = f"annotation id {annotation.get('id')}"
        record = records_by_id.get(annotation["image_id"])
        _require(record is not None, json_file,
                 f"{where} to refer to an image in 'images'", annotation["image_id"])
        bbox = annotation.get("bbox")
        _require(
            isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox),
            json_file, f"{where} to have a 'bbox' of 4 numbers [x, y, width, height]", bbox,
        )
        category_id = annotation.get("category_id")
        _require(category_id in id_map, json_file,
                 f"{where} to have a category_id among the categories {category_ids}",
                 category_id)
        record["annotations"].append(
            {
                "bbox": [float(v) for v in bbox],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[category_id],
                "iscrowd": int(annotation.get("iscrowd", 0)),
                SOURCE_KEY: where,
            }
        )


def register_coco_dataset(name: str, json_file: str, image_root: str) -> str:
    """Register a COCO instances JSON and its image folder as dataset ``name``.

    The metadata gets ``json_file`` (so Detectron2's ``COCOEvaluator`` scores against the
    original file), ``image_root``, ``evaluator_type="coco"``; once loaded also
    ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``. Loading and validation
    (see :mod:`retinanet_ext.data.validation`) happen on first use, or now with
    :func:`~retinanet_ext.data.catalog.validate_dataset`.

    Returns:
        ``name``.

    Raises:
        DatasetError: the JSON file or image folder does not exist, or ``name`` is taken.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if not os.path.isfile(json_file):
        raise DatasetError(f"COCO annotation file not found: {json_file} (dataset '{name}').")
    if not os.path.isdir(image_root):
        raise DatasetError(f"COCO image folder not found: {image_root} (dataset '{name}').")

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        records, thing_classes, id_map = load_coco_records(json_file, image_root)
        return records, thing_classes, {"thing_dataset_id_to_contiguous_id": id_map}

    register_validated(
        name,
        load_raw,
        key=("coco", json_file, image_root),
        source=f"coco: {json_file}",
        metadata={"json_file": json_file, "image_root": image_root},
        data_format="coco",
    )
    return name


register_format(DatasetFormat(
    name="coco",
    register=register_coco_dataset,
    fields=(
        SpecField("json_file", "JSON_FILE", required=True),
        SpecField("image_root", "IMAGE_ROOT", required=True),
    ),
    example="mine=coco:annotations/instances.json:images",
    description="COCO instances JSON and its image folder",
    path_keys=("json_file", "image_root"),
))
