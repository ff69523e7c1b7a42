"""CVAT for images 1.1 XML as a registered Detectron2 dataset, and a writer of it.

The file is what CVAT's "Export task/project dataset -> CVAT for images 1.1" writes
(``annotations.xml``, beside an ``images/`` folder when images are included):

* classes: the ``<label>`` names of ``<meta><task><labels>`` (a task export),
  ``<meta><project><labels>`` (a project export) or ``<meta><job><labels>``, in that order;
  a shape with any other label is an error.
* ``<image name width height [subset]>``: one image; its file is ``IMAGES/<subset>/<name>``
  (a project export's layout), ``IMAGES/<name>`` or ``IMAGES/<base name>``, where IMAGES
  is ``images=DIR`` or else the ``images`` folder beside the XML, or the XML's folder.
  ``subset=NAME`` keeps one subset (``Train``, ``Validation``, ...) of a project export.
* ``<box label xtl ytl xbr ybr [occluded] [rotation]>``: a box in pixels; occluded boxes
  are kept; a rotated box (``rotation`` in degrees, about its centre) becomes its bounding
  box, and ``<polygon points="x,y;x,y;...">`` its bounding box, each with a note counting
  them; polylines, points, ellipses, masks, cuboids, skeletons and tags are skipped,
  with a note. A ``<track>`` (CVAT for video) is an error asking for the images export.

:func:`write_cvat_xml` writes images and boxes (a model's detections, say) in the same
format, for import into a CVAT task ("Upload annotations -> CVAT 1.1").
"""

from __future__ import annotations

import datetime
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.label_tools import (
    IMAGE_EXTENSIONS,
    Box,
    Problems,
    as_number,
    as_size,
    box_annotation,
    check_class_ids,
    describe_tried,
    find_image,
    image_names,
    note_counts,
    outside_image,
    rotated_box,
    without_cyclic_gc,
)
from retinanet_ext.data.labeled_image import LabeledImage
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

__all__ = ["load_cvat_records", "register_cvat_dataset", "write_cvat_xml"]

SKIPPED_SHAPES = ("polyline", "points", "ellipse", "mask", "cuboid", "skeleton", "tag")


@dataclass
class CvatImage:
    """One ``<image>``: its name, stated size, subset and boxes (label, XYXY, where)."""

    name: str
    width: int
    height: int
    subset: str | None
    boxes: list[tuple[str, Box, str]] = field(default_factory=list)


@dataclass
class CvatFile:
    labels: list[str]
    images: list[CvatImage]
    converted: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


def _parse_root(xml_file: str) -> ET.Element:
    try:
        root = ET.parse(xml_file).getroot()
    except FileNotFoundError as error:
        raise DatasetError(f"CVAT annotation file not found: {xml_file}.") from error
    except (ET.ParseError, UnicodeDecodeError) as error:
        raise DatasetError(f"{xml_file}: malformed XML ({error}).") from error
    if root.tag != "annotations":
        raise DatasetError(f"{xml_file}: expected a CVAT <annotations> root element, found "
                           f"<{root.tag}>.")
    if root.find("track") is not None:
        raise DatasetError(f"{xml_file}: holds <track> elements (CVAT for video 1.1); export "
                           "the task as 'CVAT for images 1.1' instead.")
    return root


def _labels(root: ET.Element, xml_file: str) -> list[str]:
    for owner in ("task", "project", "job"):
        labels = root.find(f"meta/{owner}/labels")
        if labels is not None:
            break
    else:
        raise DatasetError(f"{xml_file}: no label list: expected <meta><task><labels> (a task "
                           "export) or <meta><project><labels> (a project export).")
    names = [(label.findtext("name") or "").strip() for label in labels.findall("label")]
    if not names or not all(names):
        raise DatasetError(f"{xml_file}: <meta> <labels>: expected each <label> to have a "
                           f"non-empty <name>, found {names[:10]}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"{xml_file}: <meta> <labels> lists a label twice: {repeated}.")
    return names


def _box(element: ET.Element, parsed: CvatFile) -> Box | str:
    """The XYXY box of a ``<box>`` or ``<polygon>``, or what is wrong with it."""
    get = element.get
    if element.tag == "polygon":
        pairs = [p.split(",") for p in (get("points") or "").split(";") if p.strip()]
        values = [as_number(v) for pair in pairs for v in pair]
        if len(pairs) < 3 or any(len(p) != 2 for p in pairs) or None in values:
            return ("expected points=\"x,y;x,y;x,y...\" (at least 3 points of numbers), "
                    f"found {get('points')!r:.80}")
        parsed.converted["polygon"] += 1
        return min(values[0::2]), min(values[1::2]), max(values[0::2]), max(values[1::2])
    x1, y1, x2, y2 = as_number(get("xtl")), as_number(get("ytl")), as_number(
        get("xbr")), as_number(get("ybr"))
    if x1 is None or y1 is None or x2 is None or y2 is None:
        found = {key: get(key) for key in ("xtl", "ytl", "xbr", "ybr")}
        return f"expected numbers in xtl, ytl, xbr, ybr, found {found}"
    rotation = get("rotation")
    if rotation is None:
        return x1, y1, x2, y2
    degrees = as_number(rotation)
    if degrees is None:
        return f"expected a number of degrees in rotation, found {rotation!r:.40}"
    if degrees % 360:
        parsed.converted["rotated box"] += 1
        return rotated_box(x1, y1, x2, y2, degrees, ((x1 + x2) / 2, (y1 + y2) / 2))
    return x1, y1, x2, y2


def _image(element: ET.Element, number: int, xml_file: str, parsed: CvatFile,
           problems: Problems) -> CvatImage | None:
    name = (element.get("name") or "").strip()
    width, height = as_size(element.get("width")), as_size(element.get("height"))
    if not name or width is None or height is None:
        found = {key: element.get(key) for key in ("name", "width", "height")}
        problems.add(f"{xml_file}: <image> number {number}" + (f" ({name})" if name else ""),
                     f"expected a name and positive whole width and height, found {found}")
        return None
    image = CvatImage(name, width, height, element.get("subset"))
    labels = set(parsed.labels)
    for index, shape in enumerate(element, start=1):
        tag = shape.tag
        if tag != "box" and tag != "polygon":
            if tag in SKIPPED_SHAPES:
                parsed.skipped[tag] += 1
            continue
        label = shape.get("label") or ""
        box = _box(shape, parsed) if label in labels else (
            f"label {label!r} is not one of the labels in <meta>: {parsed.labels}")
        problem = box if type(box) is str else outside_image(box, width, height)
        if problem:
            problems.add(f"{xml_file}: <image> number {number} ({name}): <{tag}> number "
                         f"{index} (label {label!r})", problem)
        else:
            image.boxes.append((label, box, f"<{tag}> number {index}"))
    return image


def parse_cvat_xml(xml_file: str, subset: str | None = None) -> CvatFile:
    """Parse a CVAT for images 1.1 file (see the module docstring).

    Raises:
        DatasetError: the file is missing, malformed, has no label list, or an image or
            shape is malformed, outside its image or of an unknown label; shapes and
            images are listed together.
    """
    root = _parse_root(xml_file)
    parsed = CvatFile(labels=_labels(root, xml_file), images=[])
    problems = Problems(f"cvat: {xml_file}")
    subsets = Counter()
    for number, element in enumerate(root.findall("image"), start=1):
        subsets[element.get("subset")] += 1
        if subset is not None and element.get("subset") != subset:
            continue
        image = _image(element, number, xml_file, parsed, problems)
        if image is not None:
            parsed.images.append(image)
    problems.raise_if_any()
    if subset is not None and not parsed.images:
        found = sorted(s for s in subsets if s) or "none"
        raise DatasetError(f"{xml_file}: no <image> of subset {subset!r}; its subsets: {found}.")
    if not parsed.images:
        raise DatasetError(f"{xml_file}: no <image> elements (a CVAT for images 1.1 file "
                           "holds one per image).")
    return parsed


def _image_file(image: CvatImage, images_dir: str, xml_file: str, problems: Problems) -> str:
    names = [image.name, os.path.basename(image.name)]
    if not os.path.splitext(image.name)[1]:  # frames of a video task: "frame_000001"
        names += [image.name + ext for ext in IMAGE_EXTENSIONS]
    relative = ([os.path.join(image.subset, n) for n in names] if image.subset else []) + names
    found, tried = find_image([images_dir], relative)
    if found is None:
        problems.add(f"{xml_file}: <image> {image.name!r}",
                     f"image file not found (looked for {describe_tried(tried)})")
    return found or ""


def load_cvat_records(
    xml_file: str, images_dir: str, subset: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a CVAT for images 1.1 file into unvalidated Detectron2 dataset dicts.

    Returns:
        (records, thing_classes): the classes in the order of the file's label list.

    Raises:
        DatasetError: see :func:`parse_cvat_xml`; also an image file that is not found.
    """
    parsed = parse_cvat_xml(xml_file, subset)
    ids = {name: index for index, name in enumerate(parsed.labels)}
    problems = Problems(f"cvat: {xml_file}")
    records = []
    for index, image in enumerate(parsed.images):
        records.append({
            "file_name": _image_file(image, images_dir, xml_file, problems),
            "image_id": index, "width": image.width, "height": image.height,
            "annotations": [box_annotation(box, ids[label], where)
                            for label, box, where in image.boxes],
            SOURCE_KEY: f"{xml_file} (<image> {image.name})",
        })
    problems.raise_if_any()
    source = f"cvat: {xml_file}"
    note_counts(source, parsed.converted, "shapes", "their bounding boxes are used")
    note_counts(source, parsed.skipped, "shapes", "not boxes, skipped")
    return records, list(parsed.labels)


def register_cvat_dataset(
    name: str, xml_file: str, images_dir: str | None = None, subset: str | None = None
) -> str:
    """Register a CVAT for images 1.1 XML file (see the module docstring) as ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        xml_file: the ``annotations.xml``.
        images_dir: the image folder; default: ``images`` beside the XML if it exists,
            else the XML's folder.
        subset: only the images of this subset (a project export's ``Train``, ...).

    Returns:
        ``name``.

    Raises:
        DatasetError: the XML file or the image folder does not exist.
    """
    xml_file = os.path.abspath(xml_file)
    if not os.path.isfile(xml_file):
        raise DatasetError(f"CVAT annotation file not found: {xml_file} (dataset '{name}').")
    beside = os.path.dirname(xml_file)
    if images_dir is None:
        images_dir = next(d for d in (os.path.join(beside, "images"), beside)
                           if os.path.isdir(d))
    images_dir = os.path.abspath(images_dir)
    if not os.path.isdir(images_dir):
        raise DatasetError(f"CVAT image folder not found: {images_dir} (dataset '{name}').")

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        with without_cyclic_gc():
            records, thing_classes = load_cvat_records(xml_file, images_dir, subset)
        return records, thing_classes, {}

    metadata: dict[str, Any] = {"xml_file": xml_file, "image_root": images_dir}
    if subset is not None:
        metadata["split"] = subset
    register_validated(name, load_raw, key=("cvat", xml_file, images_dir, subset),
                       source=f"cvat: {xml_file}" + (f" ({subset})" if subset else ""),
                       metadata=metadata, data_format="cvat")
    return name


# --- writing ----------------------------------------------------------------------------


def write_cvat_xml(images: list[LabeledImage], class_names: list[str], path: str) -> str:
    """Write images and their boxes as a CVAT for images 1.1 file; returns ``path``.

    Image names are the paths relative to the images' common folder (the base names when
    they share one), so that ``cvat:PATH:images=FOLDER`` reads the file back. Boxes with
    scores (detections) get ``source="auto"`` and a ``score`` attribute, which CVAT's
    import ignores; coordinates have 4 decimals.

    Raises:
        ValueError: a class id is not an index into ``class_names``.
    """
    check_class_ids(images, class_names)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for key, value in (("name", os.path.splitext(os.path.basename(path))[0]),
                       ("size", str(len(images))), ("mode", "annotation")):
        ET.SubElement(task, key).text = value
    labels = ET.SubElement(task, "labels")
    for class_name in class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = class_name
        ET.SubElement(label, "type").text = "rectangle"
        ET.SubElement(label, "attributes")
    ET.SubElement(root.find("meta"), "dumped").text = datetime.datetime.now(
        datetime.timezone.utc).isoformat(sep=" ")
    for index, (image, name) in enumerate(zip(images, image_names(
            [i.file_name for i in images]), strict=True)):
        element = ET.SubElement(root, "image", {"id": str(index), "name": name,
                                                "width": str(image.width),
                                                "height": str(image.height)})
        for number, (box, class_id) in enumerate(zip(image.boxes, image.class_ids,
                                                     strict=True)):
            attributes = {"label": class_names[class_id], "occluded": "0",
                          "source": "manual" if image.scores is None else "auto",
                          **dict(zip(("xtl", "ytl", "xbr", "ybr"),
                                     (f"{v:.4f}" for v in box), strict=True)),
                          "z_order": "0"}
            if image.scores is not None:
                attributes["score"] = f"{image.scores[number]:.4f}"
            ET.SubElement(element, "box", attributes)
    ET.indent(root)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


register_format(DatasetFormat(
    name="cvat",
    register=register_cvat_dataset,
    fields=(
        SpecField("xml_file", "XML_FILE", required=True),
        SpecField("images_dir", "DIR", positional=False, key="images"),
        SpecField("subset", "SUBSET", positional=False),
    ),
    example="shelf=cvat:shelf/annotations.xml:images=shelf/images",
    description=(
        "CVAT for images 1.1 XML (boxes; polygons as their bounding boxes), images in "
        "images=DIR or beside it"
    ),
    path_keys=("xml_file", "image_root"),
))
