"""Boxes out as annotation files a labelling tool imports, and this package reads back.

:data:`LABEL_WRITERS` maps a format name to a writer ``writer(images, class_names,
output_dir) -> paths written``, where ``images`` are :class:`.labeled_image.LabeledImage`
(boxes XYXY in pixels, ``class_ids`` indices into ``class_names``). ``predict
--save-labels FORMAT`` calls them with a model's detections, so that a person corrects
the model's boxes instead of drawing every box. What each writes in ``output_dir``, and
the ``--dataset`` spec that reads it back:

* ``coco``: ``annotations.json``, a COCO instances file: images, annotations (with their
  ``score``), every class as a category (id = index + 1); ``file_name`` relative to the
  images' common folder ROOT (the images stay where they are). ``coco:DIR/annotations.json:ROOT``.
* ``yolo``: ``images/`` (the images, hard-linked or copied), ``labels/<stem>.txt`` (``class
  cx cy w h`` normalised; empty for an image without boxes), ``labels/classes.txt``,
  ``data.yaml`` (``train`` and ``val``: ``images``; ``names``). ``yolo:DIR/data.yaml:train``.
* ``voc``: ``JPEGImages/`` (the images, hard-linked or copied), ``Annotations/<stem>.xml``
  (one per image, also without boxes), ``ImageSets/Main/default.txt`` (the ids). ``voc:DIR``.
* ``cvat``: ``annotations.xml``, CVAT for images 1.1, by :func:`.cvat.write_cvat_xml`;
  image names relative to ROOT, as for COCO. ``cvat:DIR/annotations.xml:images=ROOT``.
* ``labelstudio``: ``tasks.json``, Label Studio tasks with the boxes as pre-annotations, by
  :func:`.labelstudio.write_labelstudio_json`; ``label_config.xml`` (the labelling
  interface) and ``classes.txt``.
  ``labelstudio:DIR/tasks.json:images=ROOT:classes=DIR/classes.txt``.

Boxes are clipped to the image first (YOLO's coordinates must lie in [0, 1]). Two images
with one file name (from different folders) get ``<stem>_1``, ``<stem>_2``, ... in the
YOLO and VOC folders. A writer overwrites the files it writes and deletes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence
from xml.etree import ElementTree as ET

import numpy as np

from retinanet_ext.data.label_tools import check_class_ids, image_names
from retinanet_ext.data.labeled_image import LabeledImage

__all__ = ["LABEL_WRITERS", "LabelWriter", "write_coco", "write_cvat", "write_labelstudio",
           "write_voc", "write_yolo"]

LabelWriter = Callable[[Sequence[LabeledImage], Sequence[str], str], list[str]]
"""``writer(images, class_names, output_dir) -> the paths of the files written``."""

COCO_FILE = "annotations.json"
CVAT_FILE = "annotations.xml"
LABELSTUDIO_FILE = "tasks.json"
_YOLO_DECIMALS = 6  # normalised: 1e-6 of a 10,000 px image is 0.01 px
_PIXEL_DECIMALS = 2  # as CVAT writes its VOC and COCO exports


def clipped_boxes(image: LabeledImage) -> np.ndarray:
    """``float[N, 4]``: the image's XYXY boxes clipped to ``[0, width] x [0, height]``."""
    limits = np.array([image.width, image.height, image.width, image.height], dtype=np.float64)
    return np.clip(image.boxes, 0.0, limits)


def _with_clipped_boxes(images: Sequence[LabeledImage]) -> list[LabeledImage]:
    return [dataclasses.replace(image, boxes=clipped_boxes(image)) for image in images]


def _unique_names(images: Sequence[LabeledImage]) -> list[str]:
    """A file name per image, for a folder holding them all: the base name, with
    ``_1``, ``_2``, ... before the extension where two stems would collide (the label
    files are named by the stem; letter case ignored, for case-insensitive file systems)."""
    used: set[str] = set()
    names = []
    for image in images:
        stem, extension = os.path.splitext(os.path.basename(image.file_name))
        unique, suffix = stem, 1
        while unique.lower() in used:
            unique, suffix = f"{stem}_{suffix}", suffix + 1
        used.add(unique.lower())
        names.append(unique + extension)
    return names


def _place_image(source: str, destination: str) -> None:
    """``destination`` becomes the image: a hard link (no space taken) where the file system
    allows one, else a copy."""
    if os.path.lexists(destination):
        if os.path.exists(destination) and os.path.samefile(source, destination):
            return
        os.remove(destination)
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)


def _write_text(path: str, text: str) -> str:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)
    return path


# --- COCO -------------------------------------------------------------------------------


def _common_folder(images: Sequence[LabeledImage]) -> str:
    folders = {os.path.dirname(os.path.abspath(image.file_name)) for image in images}
    return os.path.commonpath(sorted(folders)) if folders else os.getcwd()


def write_coco(images: Sequence[LabeledImage], class_names: Sequence[str],
               output_dir: str) -> list[str]:
    """``output_dir/annotations.json``, a COCO instances file (not the results format):
    ``images`` (``file_name`` relative to the images' common folder, recorded as
    ``info.image_root``), ``annotations`` (``bbox`` x, y, width, height in pixels, plus
    ``score`` where given) and ``categories`` (every class, id = class index + 1, so ids
    map back to the same class order). Read back with ``coco:FILE:IMAGE_ROOT``."""
    check_class_ids(images, class_names)
    coco_images, annotations = [], []
    names = image_names([image.file_name for image in images])  # as CVAT's, Label Studio's
    for image_id, (image, name) in enumerate(zip(images, names, strict=True), start=1):
        coco_images.append({"id": image_id, "width": image.width, "height": image.height,
                            "file_name": name})
        scores = image.scores if image.scores is not None else [None] * len(image)
        for box, class_id, score in zip(clipped_boxes(image).tolist(),
                                        image.class_ids.tolist(), scores, strict=True):
            x1, y1, x2, y2 = (round(v, _PIXEL_DECIMALS) for v in box)
            annotation = {
                "id": len(annotations) + 1, "image_id": image_id, "category_id": class_id + 1,
                "bbox": [x1, y1, round(x2 - x1, _PIXEL_DECIMALS), round(y2 - y1, _PIXEL_DECIMALS)],
                "area": round((x2 - x1) * (y2 - y1), _PIXEL_DECIMALS), "iscrowd": 0,
                "segmentation": []}  # present (empty): some importers require the key
            if score is not None:
                annotation["score"] = round(float(score), 4)
            annotations.append(annotation)
    data = {
        "info": {"description": "retinanet-ext predictions",
                 "image_root": _common_folder(images)},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": index + 1, "name": name, "supercategory": ""}
                       for index, name in enumerate(class_names)],
    }
    os.makedirs(output_dir, exist_ok=True)
    return [_write_text(os.path.join(output_dir, COCO_FILE), json.dumps(data, indent=1))]


# --- YOLO -------------------------------------------------------------------------------


def _yolo_rows(image: LabeledImage) -> str:
    scale = np.array([image.width, image.height], dtype=np.float64)
    boxes = clipped_boxes(image)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / scale
    sizes = (boxes[:, 2:] - boxes[:, :2]) / scale
    return "".join(
        f"{class_id} " + " ".join(f"{v:.{_YOLO_DECIMALS}f}" for v in (*centre, *size)) + "\n"
        for class_id, centre, size in zip(image.class_ids.tolist(), centres.tolist(),
                                          sizes.tolist(), strict=True))


def write_yolo(images: Sequence[LabeledImage], class_names: Sequence[str],
               output_dir: str) -> list[str]:
    """An Ultralytics dataset in ``output_dir``: ``images/`` (the images, hard-linked or
    copied), ``labels/<stem>.txt`` (rows ``class cx cy w h`` normalised by the image size;
    an empty file for an image without boxes), ``labels/classes.txt`` (LabelImg) and
    ``data.yaml`` (``train`` and ``val`` both ``images``, ``names``; no ``path``: the
    file's folder). Read back with ``yolo:DIR/data.yaml:train``."""
    import yaml

    check_class_ids(images, class_names)
    images_dir, labels_dir = (os.path.join(output_dir, n) for n in ("images", "labels"))
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(labels_dir, exist_ok=True)
    written = []
    for image, name in zip(images, _unique_names(images), strict=True):
        _place_image(image.file_name, os.path.join(images_dir, name))
        written.append(os.path.join(images_dir, name))
        label = os.path.join(labels_dir, os.path.splitext(name)[0] + ".txt")
        written.append(_write_text(label, _yolo_rows(image)))
    written.append(_write_text(os.path.join(labels_dir, "classes.txt"),
                               "".join(f"{name}\n" for name in class_names)))
    data = {"train": "images", "val": "images", "nc": len(class_names),
            "names": dict(enumerate(class_names))}
    written.append(_write_text(os.path.join(output_dir, "data.yaml"),
                               yaml.safe_dump(data, sort_keys=False, allow_unicode=True)))
    return written


# --- Pascal VOC -------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def voc_xml(image: LabeledImage, class_names: Sequence[str], filename: str) -> str:
    """One image's VOC ``<annotation>`` (LabelImg's and CVAT's fields), as text."""
    root = ET.Element("annotation")
    _sub(root, "folder", "JPEGImages")
    _sub(root, "filename", filename)
    _sub(root, "path", os.path.abspath(image.file_name))
    _sub(_sub(root, "source"), "database", "retinanet-ext predict")
    size = _sub(root, "size")
    for tag, value in (("width", image.width), ("height", image.height), ("depth", 3)):
        _sub(size, tag, value)
    _sub(root, "segmented", 0)
    for box, class_id in zip(clipped_boxes(image).tolist(), image.class_ids.tolist(),
                             strict=True):
        element = _sub(root, "object")
        _sub(element, "name", class_names[class_id])
        for tag, value in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            _sub(element, tag, value)
        bndbox = _sub(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            _sub(bndbox, tag, f"{value:.{_PIXEL_DECIMALS}f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(images: Sequence[LabeledImage], class_names: Sequence[str],
              output_dir: str) -> list[str]:
    """A Pascal VOC folder: ``JPEGImages/`` (the images, hard-linked or copied, whatever
    their format), ``Annotations/<stem>.xml`` (one per image, an image without boxes
    included; coordinates as floats, not VOC's 1-based integers, so that they round-trip)
    and ``ImageSets/Main/default.txt`` (the ids). Read back with ``voc:DIR``; its class
    names are then those in the files, sorted, as the VOC reader finds them."""
    check_class_ids(images, class_names)
    folders = [os.path.join(output_dir, *parts) for parts in
               (("JPEGImages",), ("Annotations",), ("ImageSets", "Main"))]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    images_dir, annotations_dir, sets_dir = folders
    written, ids = [], []
    for image, name in zip(images, _unique_names(images), strict=True):
        _place_image(image.file_name, os.path.join(images_dir, name))
        written.append(os.path.join(images_dir, name))
        ids.append(os.path.splitext(name)[0])
        written.append(_write_text(os.path.join(annotations_dir, ids[-1] + ".xml"),
                                   voc_xml(image, class_names, name)))
    written.append(_write_text(os.path.join(sets_dir, "default.txt"),
                               "".join(f"{image_id}\n" for image_id in ids)))
    return written


# --- the label tools' own formats (their modules own the writing) -----------------------


def write_cvat(images: Sequence[LabeledImage], class_names: Sequence[str],
               output_dir: str) -> list[str]:
    """``output_dir/annotations.xml``, CVAT for images 1.1 (:func:`.cvat.write_cvat_xml`)."""
    from retinanet_ext.data.cvat import write_cvat_xml

    check_class_ids(images, class_names)
    os.makedirs(output_dir, exist_ok=True)
    return [write_cvat_xml(_with_clipped_boxes(images), list(class_names),
                           os.path.join(output_dir, CVAT_FILE))]


def labelstudio_config(class_names: Sequence[str]) -> str:
    """The labelling interface (Label Studio's "Labeling Interface -> Code") whose names
    the written tasks use: an image and one rectangle label per class."""
    from retinanet_ext.data.labelstudio import FROM_NAME, TO_NAME

    view = ET.Element("View")
    ET.SubElement(view, "Image", {"name": TO_NAME, "value": f"${TO_NAME}"})
    labels = ET.SubElement(view, "RectangleLabels", {"name": FROM_NAME, "toName": TO_NAME})
    for name in class_names:
        ET.SubElement(labels, "Label", {"value": name})
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def write_labelstudio(images: Sequence[LabeledImage], class_names: Sequence[str],
                      output_dir: str) -> list[str]:
    """``output_dir/tasks.json``, Label Studio tasks with the boxes as pre-annotations
    (:func:`.labelstudio.write_labelstudio_json`); ``label_config.xml``, the labelling
    interface to paste into the project; ``classes.txt``, the class names in the model's
    order (``labelstudio:...:classes=DIR/classes.txt`` keeps it; else they are sorted)."""
    from retinanet_ext.data.labelstudio import write_labelstudio_json

    check_class_ids(images, class_names)
    os.makedirs(output_dir, exist_ok=True)
    return [
        write_labelstudio_json(_with_clipped_boxes(images), list(class_names),
                               os.path.join(output_dir, LABELSTUDIO_FILE)),
        _write_text(os.path.join(output_dir, "label_config.xml"),
                    labelstudio_config(class_names)),
        _write_text(os.path.join(output_dir, "classes.txt"),
                    "".join(f"{name}\n" for name in class_names)),
    ]


LABEL_WRITERS: dict[str, LabelWriter] = {
    "coco": write_coco,
    "yolo": write_yolo,
    "voc": write_voc,
    "cvat": write_cvat,
    "labelstudio": write_labelstudio,
}
"""Format name -> writer; ``predict --save-labels FORMAT`` takes these names."""
