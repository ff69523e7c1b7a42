"""Dataset registration from one command-line string (``train_net.py --dataset SPEC``).

Grammar: ``NAME=FORMAT:FIELD[:FIELD...]``; each format's fields are in its entry of
:data:`.formats.DATASET_FORMATS` (see :mod:`.formats`). Fields are separated by ``:``, so
paths must not contain one. The built-in formats, with ``D=../shared/datasets``::

    coco : NAME=coco:JSON_FILE:IMAGE_ROOT
    voc  : NAME=voc:ROOT[:SPLIT][:annotations=DIR][:images=DIR]
           SPLIT := a name in ROOT/ImageSets/Main/ (train, val, ...)
                  | a path to a .txt file of image ids
                  | PART@NAME=FRACTION,NAME=FRACTION[,seed=SEED]   (a random split)
           no SPLIT: every XML file; folders found among common names, or the
           LabelImg layout (each XML beside its image in ROOT)
    csv  : NAME=csv:CSV_FILE[:CLASSES_FILE][:images=DIR]
    yolo : NAME=yolo:DATA_YAML:SPLIT | NAME=yolo:IMAGES_DIR[:CLASSES_FILE]
    labelme     : NAME=labelme:DIR[:classes=FILE]
    cvat        : NAME=cvat:XML_FILE[:images=DIR][:subset=SUBSET]
    labelstudio : NAME=labelstudio:JSON_FILE[:images=DIR][:classes=FILE]

NAME is what goes in ``DATASETS.TRAIN`` / ``DATASETS.TEST``: letters, digits, ``_``,
``-`` and ``.``. Examples::

    bccd_train=voc:$D/bccd/BCCD:train
    coco128=coco:$D/coco128/annotations/instances_train2017.json:$D/coco128/train2017
    facemask_train=voc:$D/facemask/archive:train@train=0.8,val=0.2,seed=0
    shapes=csv:data/boxes.csv:data/classes.txt
    raccoon=csv:data/train_labels.csv:images=images
    parts_train=yolo:parts/data.yaml:train
"""

from __future__ import annotations

# The format modules add their entries to the table when imported.
from retinanet_ext.data import (  # noqa: F401
    coco,
    csv_dataset,
    cvat,
    labelme,
    labelstudio,
    voc,
    yolo,
)
from retinanet_ext.data.formats import (
    DatasetSpec,
    parse_dataset_spec,
    register_dataset_spec,
    spec_grammar,
)

__all__ = ["SPEC_GRAMMAR", "DatasetSpec", "parse_dataset_spec", "register_dataset_spec"]

SPEC_GRAMMAR = spec_grammar()
"""The built-in formats' grammar (the live one, with formats added later: ``spec_grammar()``)."""
