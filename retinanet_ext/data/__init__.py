"""Datasets for retinanet_ext: register COCO, Pascal VOC, CSV, YOLO, LabelMe, CVAT and Label
Studio data, and validate it.

One call registers a dataset in Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``
(standard dataset dicts, ``evaluator_type="coco"``); on first load it is validated
(missing or unreadable images are errors; out-of-image boxes are clipped, empty and
inverted boxes dropped, with warnings) and summarised::

    from retinanet_ext.data import register_voc_dataset, check_data
    register_voc_dataset("bccd_train", "../shared/datasets/bccd/BCCD", "train")
    check_data(["bccd_train"])  # prints images, boxes per class, clipped / dropped

From the command line: ``--dataset NAME=voc:ROOT:SPLIT`` (see :mod:`.spec`). The formats
are a table (:mod:`.formats`): one entry per format, read by the spec parser, the help
texts and the checks at start.
"""

from retinanet_ext.data.catalog import (
    check_data,
    check_num_classes,
    dataset_classes,
    unregister_dataset,
    validate_dataset,
    validated_boxes,
)
from retinanet_ext.data.coco import register_coco_dataset
from retinanet_ext.data.csv_dataset import read_classes_file, register_csv_dataset
from retinanet_ext.data.cvat import register_cvat_dataset, write_cvat_xml
from retinanet_ext.data.formats import (
    DATASET_FORMATS,
    DatasetFormat,
    SpecField,
    dataset_paths,
    formats_help,
    register_format,
    spec_grammar,
)
from retinanet_ext.data.labeled_image import LabeledImage
from retinanet_ext.data.labelme import register_labelme_dataset
from retinanet_ext.data.labelstudio import register_labelstudio_dataset, write_labelstudio_json
from retinanet_ext.data.spec import (
    SPEC_GRAMMAR,
    DatasetSpec,
    parse_dataset_spec,
    register_dataset_spec,
)
from retinanet_ext.data.split import make_split
from retinanet_ext.data.validation import DatasetError, DatasetSummary
from retinanet_ext.data.voc import list_voc_ids, register_voc_dataset
from retinanet_ext.data.yolo import register_yolo_dataset

__all__ = [
    "DATASET_FORMATS",
    "DatasetError",
    "DatasetFormat",
    "DatasetSpec",
    "DatasetSummary",
    "LabeledImage",
    "SPEC_GRAMMAR",
    "SpecField",
    "check_data",
    "check_num_classes",
    "dataset_classes",
    "dataset_paths",
    "formats_help",
    "list_voc_ids",
    "make_split",
    "parse_dataset_spec",
    "read_classes_file",
    "register_coco_dataset",
    "register_csv_dataset",
    "register_cvat_dataset",
    "register_dataset_spec",
    "register_format",
    "register_labelme_dataset",
    "register_labelstudio_dataset",
    "register_voc_dataset",
    "register_yolo_dataset",
    "spec_grammar",
    "unregister_dataset",
    "validate_dataset",
    "validated_boxes",
    "write_cvat_xml",
    "write_labelstudio_json",
]
