"""One image's boxes as a label tool exchanges them: the input of the label writers.

The writers of the label-tool formats (``write_cvat_xml`` in :mod:`.cvat`,
``write_labelstudio_json`` in :mod:`.labelstudio`) take a list of these; ``predict
--save-labels`` builds them from a model's detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabeledImage"]


@dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class LabeledImage:
    """The boxes of one image.

    Attributes:
        file_name: path of the image file.
        width, height: the image size in pixels.
        boxes: ``float[N, 4]``, absolute XYXY pixels.
        class_ids: ``int[N]``, indices into the writer's ``class_names``.
        scores: ``float[N]`` detection scores, or ``None`` for ground truth.
    """

    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if len(class_ids) != len(boxes):
            raise ValueError(f"{self.file_name}: {len(boxes)} boxes but {len(class_ids)} "
                             "class ids.")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", class_ids)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"{self.file_name}: {len(boxes)} boxes but {len(scores)} "
                                 "scores.")
            object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)
