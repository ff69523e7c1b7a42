"""Label Studio JSON export as a registered Detectron2 dataset, and a writer of
pre-annotations.

The file is Label Studio's "Export -> JSON": a list of tasks (one task object, as cloud
storage writes them, is read too). Per task:

* the image: ``data.image`` (or the task's only string in ``data``), a URL mapped to a
  file under ``images=DIR`` (default: the JSON's folder):
  ``/data/local-files/?d=PATH`` -> ``DIR/PATH``, else PATH without its first folder,
  then without its first two, ... down to ``DIR/<base name>`` (so DIR may be any folder
  on the path); ``/data/upload/<project>/<8 hex>-<name>`` (an uploaded file) ->
  ``DIR/<8 hex>-<name>``, else ``DIR/<name>`` (the original name, without the prefix
  Label Studio adds); ``http(s)://``, ``s3://``, ``gs://`` URLs and plain paths -> their
  path under DIR in the same way, down to the base name.
* the boxes: the task's annotation marked ``ground_truth``, else its most recently
  created one (cancelled/skipped ones left out); a task with none takes its first
  ``predictions`` entry (pre-annotations), with a note; with neither, the image has no
  objects (with a note).
* ``rectanglelabels`` results: ``value.x``, ``y``, ``width``, ``height`` in percent of
  ``original_width`` / ``original_height`` (the image's own size when those are absent),
  one label in ``value.rectanglelabels``; a ``rotation`` (degrees, clockwise about the
  top-left corner, as Label Studio turns them) gives the rotated box's bounding box;
  ``polygonlabels`` results (points in percent) their bounding boxes; both with a note.
  Other result types (choices, keypoints, brushes, ...) are skipped, with a note.

Classes: the sorted labels found, or ``classes=FILE`` (one name a line; the order of the
labelling config's ``<Label>`` tags, say), where any other label is an error.

:func:`write_labelstudio_json` writes images and boxes as tasks to import: detections
(with scores) as ``predictions`` (pre-annotations with ``model_version`` and ``score``),
boxes without scores as ``annotations``, for a labelling config with
``<Image name="image" value="$image"/>`` and ``<RectangleLabels name="label"
toName="image">``.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.label_tools import (
    Box,
    Problems,
    as_number,
    as_size,
    box_annotation,
    check_class_ids,
    class_ids,
    describe_tried,
    find_image,
    image_names,
    note_counts,
    outside_image,
    points_box,
    read_json,
    rotated_box,
    without_cyclic_gc,
)
from retinanet_ext.data.labeled_image import LabeledImage
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError, read_image_header

__all__ = ["MODEL_VERSION", "load_labelstudio_records", "register_labelstudio_dataset",
           "write_labelstudio_json"]

MODEL_VERSION = "retinanet_ext"
"""The ``model_version`` of the predictions :func:`write_labelstudio_json` writes."""
FROM_NAME, TO_NAME = "label", "image"
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
_LABEL_KEYS = {"rectanglelabels": "rectanglelabels", "polygonlabels": "polygonlabels"}


class LabelStudioBox(NamedTuple):
    """A box as the file states it: in percent, turned ``rotation`` degrees about its
    top-left corner."""

    label: str
    percent: Box  # x1, y1, x2, y2, unturned
    rotation: float
    where: str  # e.g. "result 2 (rectanglelabels)"


@dataclass
class LabelStudioTask:
    """One task: its image URL, image size (if stated) and boxes."""

    where: str
    url: str
    width: int | None = None
    height: int | None = None
    boxes: list[LabelStudioBox] = field(default_factory=list)
    source: str = "annotation"  # or "prediction", "none"


@dataclass
class LabelStudioFile:
    tasks: list[LabelStudioTask] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


def _tails(path: str) -> list[str]:
    """``a/b/c.jpg`` -> ``a/b/c.jpg``, ``b/c.jpg``, ``c.jpg``."""
    parts = [part for part in path.split("/") if part]
    return ["/".join(parts[index:]) for index in range(len(parts))]


def image_candidates(url: str) -> list[str]:
    """Paths, relative to the images folder, where the image of ``url`` may be (see the
    module docstring), most specific first."""
    if url.startswith("/data/"):  # Label Studio's own storage, without urlparse (per image)
        path, _, query = url.partition("?")
        local = [p[2:] for p in query.split("&") if p.startswith("d=")]
        if local:  # "+" stays "+", as Label Studio writes it (parse_qs would make it " ")
            return _tails(urllib.parse.unquote(local[0]))
        if path.startswith("/data/upload/"):
            base = urllib.parse.unquote(path.rpartition("/")[2])
            stripped = _UPLOAD_PREFIX.match(base)
            return [base] + ([stripped.group(1)] if stripped else [])
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme and len(parsed.scheme) > 1:  # a URL, not a Windows drive letter
        return _tails(urllib.parse.unquote(parsed.path))
    return list(dict.fromkeys([url, *_tails(urllib.parse.unquote(url).replace("\\", "/"))]))


def _read_tasks(json_file: str) -> list[Any]:
    try:
        data = read_json(json_file)
    except FileNotFoundError as error:
        raise DatasetError(f"Label Studio export not found: {json_file}.") from error
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{json_file}: not valid JSON ({str(error)[:120]}).") from error
    if isinstance(data, dict) and "data" in data:
        data = [data]
    if not isinstance(data, list):
        raise DatasetError(f"{json_file}: expected a Label Studio JSON export: a list of tasks "
                           f"with 'data' and 'annotations', found {type(data).__name__}.")
    if not data:
        raise DatasetError(f"{json_file}: the export holds no tasks.")
    return data


def _task_url(task: dict[str, Any]) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"] or None
    strings = [v for v in data.values() if isinstance(v, str) and v]
    return strings[0] if len(strings) == 1 else None


def _chosen_annotation(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[the annotation marked ground truth, else the latest created], cancelled and skipped
    ones left out; [] if none is left."""
    kept = [e for e in entries if not (e.get("was_cancelled") or e.get("skipped"))]
    if len(kept) < 2:
        return kept
    truth = [e for e in kept if e.get("ground_truth") is True]
    order = sorted(range(len(kept)), key=lambda i: (str(kept[i].get("created_at") or ""), i))
    return truth[:1] or [kept[order[-1]]]


def _chosen_results(task: dict[str, Any], where: str,
                    problems: Problems) -> tuple[list[Any] | None, str]:
    """(results, "annotation" | "prediction" | "none") of a task (module docstring)."""
    for key, kind in (("annotations", "annotation"), ("predictions", "prediction")):
        entries = task.get(key, [])
        if type(entries) is not list or not all(type(e) is dict for e in entries):
            problems.add(where, f"expected '{key}' to be a list of objects with a 'result'")
            return None, kind
        if kind == "annotation":
            entries = _chosen_annotation(entries)
        if entries:
            results = entries[0].get("result")
            if type(results) is not list:
                problems.add(where, f"expected the {kind}'s 'result' to be a list, found "
                                    f"{type(results).__name__}")
                return None, kind
            return results, kind
    return [], "none"


def _percent_box(value: dict[str, Any], kind: str) -> tuple[float, ...] | str:
    """x1, y1, x2, y2 in percent (for a rectangle, its unrotated corners), or what is
    wrong."""
    if kind == "polygonlabels":
        points = value.get("points")
        box = points_box(points) if type(points) is list and len(points) >= 3 else None
        if box is None:
            return ("expected value.points, at least 3 points [x, y] in percent, found "
                    f"{json.dumps(points)[:80]}")
        return box
    get = value.get
    x, y, w, h = as_number(get("x")), as_number(get("y")), as_number(get("width")), as_number(
        get("height"))
    if x is None or y is None or w is None or h is None:
        found = {k: value.get(k) for k in ("x", "y", "width", "height")}
        return f"expected numbers (percent) in value.x, y, width, height, found {found}"
    return x, y, x + w, y + h


def _parse_result(result: Any, number: int, task: LabelStudioTask, parsed: LabelStudioFile,
                  problems: Problems) -> None:
    value = result.get("value") if type(result) is dict else None
    if type(value) is not dict:
        problems.add(f"{task.where}: result {number}", "expected an object with 'type' and "
                                                       "'value'")
        return
    kind = result.get("type")
    label_key = _LABEL_KEYS.get(kind) if type(kind) is str else None
    if label_key is None:
        parsed.skipped[str(kind)[:40] or "untyped"] += 1
        return
    labels = value.get(label_key)
    if not (type(labels) is list and len(labels) == 1 and type(labels[0]) is str
            and labels[0]):
        problems.add(f"{task.where}: result {number}", f"expected one label in "
                     f"value.{label_key}, found {json.dumps(labels)[:80]}")
        return
    percent = _percent_box(value, kind)
    rotation = as_number(value.get("rotation") or 0)
    if type(percent) is str or rotation is None:
        problems.add(f"{task.where}: result {number} (label {labels[0]!r})",
                     percent if type(percent) is str else
                     f"expected a number of degrees in value.rotation, found "
                     f"{value.get('rotation')!r:.40}")
        return
    rotation %= 360
    outside = None if rotation else outside_image(percent, 100, 100, "the image (in percent)")
    if outside:
        problems.add(f"{task.where}: result {number} (label {labels[0]!r})", outside)
        return
    width, height = as_size(result.get("original_width")), as_size(result.get(
        "original_height"))
    if width is not None and height is not None:
        task.width, task.height = width, height
    if kind == "polygonlabels":
        parsed.converted["polygon"] += 1
    elif rotation:
        parsed.converted["rotated rectangle"] += 1
    task.boxes.append(LabelStudioBox(labels[0], percent, rotation, f"result {number} ({kind})"))


def parse_labelstudio_json(json_file: str) -> LabelStudioFile:
    """Parse a Label Studio JSON export (see the module docstring); boxes stay in percent.

    Raises:
        DatasetError: the file is missing or malformed, or a task or result is; tasks and
            results are listed together.
    """
    parsed = LabelStudioFile()
    problems = Problems(f"labelstudio: {json_file}")
    for number, task in enumerate(_read_tasks(json_file), start=1):
        task_id = task.get("id") if isinstance(task, dict) else None
        where = f"{json_file}: task {number}" + (f" (id {task_id})" if task_id is not None
                                                 else "")
        url = _task_url(task) if isinstance(task, dict) else None
        if url is None:
            problems.add(where, "expected 'data' with the image URL in 'image' (or as its only "
                                "string)")
            continue
        results, source = _chosen_results(task, where, problems)
        if results is None:
            continue
        entry = LabelStudioTask(where, url, source=source)
        for index, result in enumerate(results, start=1):
            _parse_result(result, index, entry, parsed, problems)
        parsed.tasks.append(entry)
    problems.raise_if_any()
    return parsed


def _annotations(task: LabelStudioTask, image: str, ids: dict[str, int],
                 problems: Problems) -> list[dict[str, Any]]:
    """The task's boxes in absolute pixels (of the stated size, or else the image's own),
    as Detectron2 annotations."""
    if not task.boxes:
        return []
    if task.width is None or task.height is None:
        header = read_image_header(image, referenced_by=task.where)
        task.width, task.height = header.width, header.height
    x_scale, y_scale = task.width / 100, task.height / 100
    annotations = []
    for label, (x1, y1, x2, y2), rotation, where in task.boxes:
        box = x1 * x_scale, y1 * y_scale, x2 * x_scale, y2 * y_scale
        if rotation:
            box = rotated_box(*box, rotation, box[:2])
            outside = outside_image(box, task.width, task.height)
            if outside:
                problems.add(f"{task.where}: {where}", outside)
                continue
        if label not in ids:
            problems.add(f"{task.where}: {where}",
                         f"label {label!r} is not one of the classes {list(ids)}")
            continue
        annotations.append(box_annotation(box, ids[label], where))
    return annotations


def load_labelstudio_records(
    json_file: str, images_dir: str, classes_file: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a Label Studio JSON export into unvalidated Detectron2 dataset dicts.

    Returns:
        (records, thing_classes)

    Raises:
        DatasetError: see :func:`parse_labelstudio_json`; also images not found and labels
            outside ``classes_file``.
    """
    parsed = parse_labelstudio_json(json_file)
    thing_classes, ids = class_ids((b.label for t in parsed.tasks for b in t.boxes),
                                   classes_file)
    problems = Problems(f"labelstudio: {json_file}")
    records = []
    for index, task in enumerate(parsed.tasks):
        candidates = image_candidates(task.url)
        image, tried = find_image([images_dir], candidates)
        if image is None:
            problems.add(task.where, f"image {task.url!r} not found (looked for "
                                     f"{describe_tried(tried)})" if candidates else
                         f"image URL {task.url!r} names no file")
            continue
        record: dict[str, Any] = {"file_name": image, "image_id": index,
                                  "annotations": _annotations(task, image, ids, problems),
                                  SOURCE_KEY: task.where}
        if task.width and task.height:
            record["width"], record["height"] = task.width, task.height
        records.append(record)
    problems.raise_if_any()
    _note(f"labelstudio: {json_file}", parsed)
    return records, thing_classes


def _note(source: str, parsed: LabelStudioFile) -> None:
    note_counts(source, parsed.converted, "results", "their bounding boxes are used")
    note_counts(source, parsed.skipped, "results", "not boxes, skipped")
    sources = Counter(task.source for task in parsed.tasks)
    note_counts(source, {"tasks": sources["prediction"]}, "without annotations",
                "their first prediction (pre-annotation) is used")
    note_counts(source, {"tasks": sources["none"]}, "with neither annotations nor "
                "predictions", "images without objects")


def register_labelstudio_dataset(
    name: str, json_file: str, images_dir: str | None = None, classes_file: str | None = None
) -> str:
    """Register a Label Studio JSON export (see the module docstring) as ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: the export.
        images_dir: the folder the image URLs are mapped to; default: the JSON's folder.
        classes_file: class names, one a line; default: the sorted labels found.

    Returns:
        ``name``.

    Raises:
        DatasetError: the JSON file, the image folder or the classes file does not exist.
    """
    json_file = os.path.abspath(json_file)
    if not os.path.isfile(json_file):
        raise DatasetError(f"Label Studio export not found: {json_file} (dataset '{name}').")
    images_dir = os.path.abspath(images_dir or os.path.dirname(json_file))
    if not os.path.isdir(images_dir):
        raise DatasetError(f"Label Studio image folder not found: {images_dir} (dataset "
                           f"'{name}').")
    if classes_file is not None:
        classes_file = os.path.abspath(classes_file)
        if not os.path.isfile(classes_file):
            raise DatasetError(f"Classes file not found: {classes_file} (dataset '{name}').")

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        with without_cyclic_gc():
            records, thing_classes = load_labelstudio_records(json_file, images_dir, classes_file)
        return records, thing_classes, {}

    metadata: dict[str, Any] = {"json_file": json_file, "image_root": images_dir}
    if classes_file is not None:
        metadata["classes_file"] = classes_file
    register_validated(name, load_raw, key=("labelstudio", json_file, images_dir, classes_file),
                       source=f"labelstudio: {json_file}", metadata=metadata,
                       data_format="labelstudio")
    return name


# --- writing ----------------------------------------------------------------------------


def _result(image: LabeledImage, number: int, class_name: str) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in image.boxes[number])
    width, height = image.width, image.height
    result: dict[str, Any] = {
        "id": f"b{number}", "type": "rectanglelabels", "from_name": FROM_NAME,
        "to_name": TO_NAME, "original_width": width, "original_height": height,
        "image_rotation": 0,
        "value": {"x": x1 / width * 100, "y": y1 / height * 100,
                  "width": (x2 - x1) / width * 100, "height": (y2 - y1) / height * 100,
                  "rotation": 0, "rectanglelabels": [class_name]},
    }
    if image.scores is not None:
        result["score"] = float(image.scores[number])
    return result


def write_labelstudio_json(
    images: list[LabeledImage],
    class_names: list[str],
    path: str,
    image_url_prefix: str = "/data/local-files/?d=",
) -> str:
    """Write images and their boxes as Label Studio tasks to import; returns ``path``.

    Each task's ``data.image`` is ``image_url_prefix`` + the image's path relative to the
    images' common folder (its base name when they share one): with the default, Label
    Studio's local-files storage serves it when that folder is under its document root
    (add the folder's path below the root to the prefix). Boxes with scores become one
    ``predictions`` entry per task (``model_version`` :data:`MODEL_VERSION`, the task's
    ``score`` the mean of its boxes'), boxes without scores one ``annotations`` entry.
    ``labelstudio:PATH:images=FOLDER`` reads the file back.

    Raises:
        ValueError: a class id is not an index into ``class_names``.
    """
    check_class_ids(images, class_names)
    tasks = []
    for image, name in zip(images, image_names([i.file_name for i in images]),
                           strict=True):
        results = [_result(image, n, class_names[int(c)]) for n, c in
                   enumerate(image.class_ids)]
        task: dict[str, Any] = {"data": {"image": image_url_prefix + urllib.parse.quote(name)}}
        if image.scores is None:
            task["annotations"] = [{"result": results, "ground_truth": False}]
        else:
            score = float(image.scores.mean()) if len(image.scores) else 0.0
            task["predictions"] = [{"model_version": MODEL_VERSION, "score": score,
                                    "result": results}]
        tasks.append(task)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:  # one task a line: compact, still readable
        f.write("[\n" + ",\n".join(json.dumps(task) for task in tasks) + "\n]\n")
    return path


register_format(DatasetFormat(
    name="labelstudio",
    register=register_labelstudio_dataset,
    fields=(
        SpecField("json_file", "JSON_FILE", required=True),
        SpecField("images_dir", "DIR", positional=False, key="images"),
        SpecField("classes_file", "FILE", positional=False, key="classes"),
    ),
    example="shelf=labelstudio:shelf/export.json:images=shelf/images",
    description=(
        "Label Studio JSON export (rectanglelabels in percent of the image), image URLs "
        "mapped to files in images=DIR by path or base name"
    ),
    path_keys=("json_file", "image_root", "classes_file"),
))
