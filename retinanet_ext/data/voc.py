"""Pascal VOC XML annotations (and VOC-like folders) as registered Detectron2 datasets.

Layouts understood, the folders found by name unless given (``annotations_dir`` /
``images_dir``, or ``annotations=DIR`` / ``images=DIR`` in a spec):

* Pascal VOC: ``ROOT/Annotations/<id>.xml``, ``ROOT/JPEGImages/<id>.jpg`` and splits in
  ``ROOT/ImageSets/Main/<split>.txt`` (bccd).
* VOC-like, without ``ImageSets``: the XML files in the first of ``Annotations``,
  ``annotations``, ``annots``, ``labels``, ``xml`` that holds any, the images in the first of
  ``JPEGImages``, ``images``, ``imgs`` that exists (facemask: ``annotations/`` + ``images/``).
  Use every file (``split=None``), pass ``ids``, or a reproducible random split such as
  ``split="train@train=0.8,val=0.2,seed=0"`` (see :mod:`.split`).
* LabelImg's own layout: each image's XML beside it, all in ``ROOT``.

An image is ``<id>`` with a common image extension, or the XML's ``<filename>``, in the
images folder (else beside the XML). Box coordinates are used as written, as absolute
XYXY pixels. (Detectron2's own ``load_voc_instances`` subtracts 1 from ``xmin``/``ymin``
for the original 1-based VOC files; the label tools behind bccd and facemask write edge
coordinates, e.g. bccd's ``ymax=480`` on a 480-pixel-high image, so no shift is applied.)
``difficult`` objects are kept, as Detectron2 does.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detectron2.structures import BoxMode

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.split import parse_random_split
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

_IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG",
)
ANNOTATION_FOLDERS = ("Annotations", "annotations", "annots", "labels", "xml")
"""Where the XML files are looked for, in this order (the first folder holding any)."""
IMAGE_FOLDERS = ("JPEGImages", "images", "imgs")
"""Where the images are looked for, in this order (the first folder that exists)."""


@dataclass
class VocObject:
    """One ``<object>``: class name and XYXY box as written."""

    name: str
    box: tuple[float, float, float, float]


@dataclass
class VocAnnotation:
    """One parsed VOC XML file."""

    path: str
    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject]


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def parse_voc_xml(path: str) -> VocAnnotation:
    """Parse one VOC annotation file.

    Raises:
        DatasetError: the file is missing, not well-formed XML, or an object lacks its
            name or a numeric box coordinate; the message names the file.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as error:
        raise DatasetError(f"VOC annotation file not found: {path}.") from error
    except ET.ParseError as error:
        raise DatasetError(f"{path}: malformed XML ({error}).") from error
    if root.tag != "annotation":
        raise DatasetError(f"{path}: expected a VOC <annotation> root element, found <{root.tag}>.")

    width = height = None
    size = root.find("size")
    if size is not None:
        try:
            width_text, height_text = _text(size, "width"), _text(size, "height")
            width = int(float(width_text)) if width_text else None
            height = int(float(height_text)) if height_text else None
        except (ValueError, OverflowError) as error:  # OverflowError: "inf"
            raise DatasetError(f"{path}: <size> is not numeric ({error}).") from error
        if not width or not height:  # some tools write 0 when unknown: ask the image
            width = height = None

    objects = []
    for index, element in enumerate(root.findall("object"), start=1):
        name = _text(element, "name")
        if name is None:
            raise DatasetError(f"{path}: <object> number {index} has no <name>.")
        bndbox = element.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{path}: <object> number {index} ({name}) has no <bndbox>.")
        coordinates = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _text(bndbox, tag)
            try:
                coordinates.append(float(value))  # type: ignore[arg-type]
            except (TypeError, ValueError) as error:
                raise DatasetError(
                    f"{path}: <object> number {index} ({name}): expected a number in "
                    f"<bndbox><{tag}>, found {value!r}."
                ) from error
        objects.append(VocObject(name=name, box=tuple(coordinates)))  # type: ignore[arg-type]
    return VocAnnotation(
        path=path, filename=_text(root, "filename"), width=width, height=height, objects=objects
    )


def _has_xml(folder: str) -> bool:
    try:
        return any(f.endswith(".xml") for f in os.listdir(folder))
    except OSError:
        return False


def _given_dir(root: str, given: str, what: str) -> str:
    path = os.path.normpath(os.path.join(root, given))
    if not os.path.isdir(path):
        raise DatasetError(f"VOC {what} folder not found: {path}.")
    return path


def resolve_voc_layout(
    root: str, annotations_dir: str | None = None, images_dir: str | None = None
) -> tuple[str, str]:
    """The annotations and images folders of a VOC dataset (see the module docstring).

    Args:
        root: the dataset folder.
        annotations_dir, images_dir: given folders, relative to ``root`` (or absolute).

    Returns:
        (annotations folder, images folder), absolute.

    Raises:
        DatasetError: a given folder does not exist, or no folder holds XML files; the
            message lists the names looked for and the folders found.
    """
    if annotations_dir is not None:
        annotations = _given_dir(root, annotations_dir, "annotations")
    else:
        found = [os.path.join(root, n) for n in ANNOTATION_FOLDERS
                 if os.path.isdir(os.path.join(root, n))]
        with_xml = [path for path in found if _has_xml(path)]
        if with_xml:
            annotations = with_xml[0]
        elif _has_xml(root):
            annotations = root  # LabelImg: each XML beside its image
        else:
            folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
            raise DatasetError(
                f"No VOC annotations in {root}: expected .xml files in one of "
                f"{list(ANNOTATION_FOLDERS)} or in {root} itself (LabelImg); found folders "
                f"{folders or 'none'}. Name the folders with annotations=DIR and images=DIR "
                "(or annotations_dir= / images_dir= in Python)."
            )
    if images_dir is not None:
        images = _given_dir(root, images_dir, "images")
    else:
        candidates = [os.path.join(root, n) for n in IMAGE_FOLDERS]
        images = next((path for path in candidates if os.path.isdir(path)), annotations)
    return annotations, images


def list_voc_ids(annotations_dir: str) -> list[str]:
    """The ids (file stems) of every ``*.xml`` in ``annotations_dir``, sorted."""
    return sorted(
        os.path.splitext(f)[0] for f in os.listdir(annotations_dir) if f.endswith(".xml")
    )


def _read_ids_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        # VOC's per-class files hold "<id> <flag>"; the id is the first field.
        return [line.split()[0] for line in f if line.strip()]


def _resolve_ids(
    root: str, annotations_dir: str, split: str | None, ids: Sequence[str] | None
) -> list[str]:
    if split is not None and ids is not None:
        raise DatasetError("Pass either split or ids to register_voc_dataset, not both.")
    if ids is not None:
        return [str(i) for i in ids]
    if split is None:
        return list_voc_ids(annotations_dir)
    random_split = parse_random_split(split)
    if random_split is not None:
        return random_split.select(list_voc_ids(annotations_dir))
    if split.endswith(".txt") and os.path.isfile(split):
        return _read_ids_file(split)
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        main = os.path.join(root, "ImageSets", "Main")
        available = (
            sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt"))
            if os.path.isdir(main) else []
        )
        raise DatasetError(
            f"VOC split file not found: {split_file}. Available splits: {available or 'none'}"
            f"; without ImageSets use split=None (all files), ids=[...], or a random split "
            f"such as 'train@train=0.8,val=0.2,seed=0'."
        )
    return _read_ids_file(split_file)


def _find_image(images_dir: str, image_id: str, filename: str | None, xml_path: str) -> str:
    folders = list(dict.fromkeys([images_dir, os.path.dirname(xml_path)]))
    names = [image_id + ext for ext in _IMAGE_EXTENSIONS]
    if filename:
        names.append(os.path.basename(filename))
    candidates = [os.path.join(folder, n) for folder in folders for n in names]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise DatasetError(
        f"Image file not found for {xml_path}: expected {candidates[0]} (also tried "
        f"{', '.join(os.path.basename(c) for c in names[1:])}"
        + (f" in {' and '.join(folders)}" if len(folders) > 1 else "")
        + ")."
    )


def load_voc_records(
    annotations_dir: str,
    images_dir: str,
    ids: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read VOC XML files into unvalidated Detectron2 dataset dicts.

    Args:
        annotations_dir: folder of ``<id>.xml``.
        images_dir: folder of the images (``<id>.jpg`` or the XML's ``<filename>``).
        ids: which files, in this order; ``image_id`` is the position in this list.
        class_names: the classes, in contiguous-id order. ``None``: the sorted names found
            in *every* XML file of ``annotations_dir``, so that all splits of one folder
            share the same classes and ids.

    Returns:
        (records, thing_classes)

    Raises:
        DatasetError: a file is missing or malformed, or an object's class is not in
            ``class_names``; the message names the file.
    """
    parsed = {
        image_id: parse_voc_xml(os.path.join(annotations_dir, image_id + ".xml"))
        for image_id in ids
    }
    if class_names is None:
        class_names = _discover_class_names(annotations_dir, parsed)
    class_names = list(class_names)
    class_ids = {name: index for index, name in enumerate(class_names)}
    records = [
        _voc_record(index, image_id, parsed[image_id], images_dir, class_ids, class_names)
        for index, image_id in enumerate(ids)
    ]
    return records, class_names


def _discover_class_names(annotations_dir: str, parsed: dict[str, VocAnnotation]) -> list[str]:
    """The sorted class names of every XML file in ``annotations_dir``: those already
    ``parsed`` (id -> parsed file) and the others, read here."""
    names = {o.name for a in parsed.values() for o in a.objects}
    for other_id in set(list_voc_ids(annotations_dir)) - set(parsed):
        names.update(
            o.name for o in parse_voc_xml(
                os.path.join(annotations_dir, other_id + ".xml")).objects
        )
    return sorted(names)


def _voc_record(
    index: int,
    image_id: str,
    annotation: VocAnnotation,
    images_dir: str,
    class_ids: dict[str, int],
    class_names: list[str],
) -> dict[str, Any]:
    """The dataset dict of one parsed XML file; ``index`` becomes its ``image_id``."""
    record: dict[str, Any] = {
        "file_name": _find_image(images_dir, image_id, annotation.filename, annotation.path),
        "image_id": index,
        "annotations": [],
        SOURCE_KEY: annotation.path,
    }
    if annotation.width and annotation.height:
        record["width"], record["height"] = annotation.width, annotation.height
    for number, obj in enumerate(annotation.objects, start=1):
        if obj.name not in class_ids:
            raise DatasetError(
                f"{annotation.path}: <object> number {number} has class '{obj.name}', "
                f"which is not one of the dataset's classes {class_names}."
            )
        record["annotations"].append(
            {
                "bbox": list(obj.box),
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": class_ids[obj.name],
                "iscrowd": 0,
                SOURCE_KEY: f"object {number}",
            }
        )
    return record


def register_voc_dataset(
    name: str,
    root: str,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    *,
    annotations_dir: str | None = None,
    images_dir: str | None = None,
    ids: Sequence[str] | None = None,
) -> str:
    """Register a Pascal VOC (or VOC-like) folder as dataset ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        root: the dataset folder (e.g. ``.../bccd/BCCD`` or ``.../facemask/archive``).
        split: which images: ``None`` for every XML file; a split name read from
            ``ROOT/ImageSets/Main/<split>.txt``; a path to a ``.txt`` file of ids; or a
            random split ``PART@NAME=FRACTION,...[,seed=SEED]`` (see :mod:`.split`).
        class_names: class names in contiguous-id order; an object of another class is
            an error. ``None``: the sorted names found in the folder's XML files.
        annotations_dir: the XML folder, relative to ``root``; default: the first of
            :data:`ANNOTATION_FOLDERS` holding XML files, else ``root`` (LabelImg).
        images_dir: the image folder, relative to ``root``; default: the first of
            :data:`IMAGE_FOLDERS` that exists, else the XML folder.
        ids: explicit image ids instead of ``split`` (e.g. from :func:`.make_split`).

    Returns:
        ``name``.

    Raises:
        DatasetError: a folder or the split file does not exist, or ``name`` is taken.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"VOC dataset folder not found: {root} (dataset '{name}').")
    annotations_path, images_path = resolve_voc_layout(root, annotations_dir, images_dir)
    image_ids = _resolve_ids(root, annotations_path, split, ids)
    if not image_ids:
        raise DatasetError(f"VOC dataset '{name}' in {root} (split {split!r}) has no images.")
    fixed_classes = list(class_names) if class_names is not None else None

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        records, thing_classes = load_voc_records(
            annotations_path, images_path, image_ids, fixed_classes
        )
        return records, thing_classes, {}

    metadata: dict[str, Any] = {"dirname": root, "image_root": images_path}
    if split is not None:
        metadata["split"] = split
    if fixed_classes is not None:
        metadata["thing_classes"] = fixed_classes
    register_validated(
        name,
        load_raw,
        key=("voc", root, annotations_path, images_path, tuple(image_ids),
             None if fixed_classes is None else tuple(fixed_classes)),
        source=f"voc: {root}" + (f" ({split})" if split else ""),
        metadata=metadata,
        data_format="voc",
    )
    return name


register_format(DatasetFormat(
    name="voc",
    register=register_voc_dataset,
    fields=(
        SpecField("root", "ROOT", required=True),
        SpecField("split", "SPLIT"),
        SpecField("annotations_dir", "DIR", positional=False, key="annotations"),
        SpecField("images_dir", "DIR", positional=False, key="images"),
    ),
    example="pets=voc:data/pets:train",
    description=(
        "Pascal VOC XML, folders found by name (Annotations, annots, ...; JPEGImages, "
        "images, ...) or LabelImg's XML beside each image"
    ),
    path_keys=("dirname", "image_root"),
))
