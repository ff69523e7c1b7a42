"""What ``import retinanet_ext`` loads: its components, not the demo's data code.

Detectron2 itself imports cv2 when it is imported (``detectron2.utils.env``'s
``_configure_libraries``) unless ``DETECTRON2_DISABLE_CV2=1``; with that set, nothing of
ours may import cv2 either (an ``import cv2`` would then fail, Detectron2 having put None in
``sys.modules['cv2']``).
"""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import sys
import retinanet_ext
from detectron2.modeling import META_ARCH_REGISTRY
assert "RetinaNetExt" in META_ARCH_REGISTRY, "components not registered"
loaded = [m for m in ("retinanet_ext.data.synthetic", "retinanet_ext.demo") if m in sys.modules]
assert not loaded, f"imported on import: {loaded}"
assert sys.modules.get("cv2") is None, "cv2 was imported"
print("ok")
"""


def test_import_registers_and_loads_no_demo_code_nor_cv2() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "DETECTRON2_DISABLE_CV2": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
