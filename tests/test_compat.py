"""The Detectron2 compatibility bridges: inert where the real thing exists, clear where not.

The suite runs on two Detectron2 builds (``./run test``): PyPI's v0.6 without
``detectron2._C`` and a wheel built from current source with it. Tests about one
route's bridges say so in their skip reason; tests of behaviour run on both.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from retinanet_ext import compat

REPO_ROOT = Path(__file__).resolve().parent.parent

requires_missing_extension = pytest.mark.skipif(
    compat.has_compiled_extension(),
    reason="about the PyPI v0.6 route's stand-in for detectron2._C; this Detectron2 has the "
    "real extension",
)
requires_extension = pytest.mark.skipif(
    not compat.has_compiled_extension(),
    reason="about Detectron2 with its compiled extension (source/wheel route); this one lacks "
    "detectron2._C",
)


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=300, cwd=cwd,
    )


@pytest.mark.skipif(
    compat.has_compiled_extension(),
    reason="simulates v0.6's layout (rotated ops as detectron2._C attributes) in a venv without "
    "the extension; here the real one is installed (test_real_extension_in_use covers it)",
)
def test_extension_stand_in_inert_when_extension_exists_v06_layout() -> None:
    result = run_python(
        """
        import sys, types
        import detectron2
        real_extension = types.ModuleType("detectron2._C")
        real_extension.box_iou_rotated = lambda a, b: "real op"
        sys.modules["detectron2._C"] = real_extension
        detectron2._C = real_extension

        import retinanet_ext
        from retinanet_ext import compat
        import importlib
        nms_module = importlib.import_module("detectron2.layers.nms")
        from detectron2.layers import rotated_boxes

        assert compat.has_compiled_extension()
        assert sys.modules["detectron2._C"] is real_extension
        assert rotated_boxes.pairwise_iou_rotated(None, None) == "real op"
        assert nms_module.nms_rotated.__module__ == "detectron2.layers.nms"
        print("INERT-OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "INERT-OK" in result.stdout


@requires_extension
def test_real_extension_in_use() -> None:
    from detectron2.layers import nms_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    assert not isinstance(sys.modules["detectron2._C"], compat._MissingExtensionModule)
    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [10.0, 10.0, 4.0, 2.0, 0.0]]))
    iou = pairwise_iou_rotated(boxes, boxes)
    assert iou[0, 0].item() == pytest.approx(1.0)
    assert iou[0, 1].item() == pytest.approx(0.5)
    keep = nms_rotated(boxes.tensor, torch.tensor([0.9, 0.8]), 0.3)
    assert keep.tolist() == [0]


@requires_extension
def test_fast_coco_evaluator_matches_pycocotools() -> None:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO()
    generator = torch.Generator().manual_seed(0)
    images, annotations, detections = [], [], []
    for image_id in range(1, 6):
        images.append({"id": image_id, "width": 200, "height": 200})
        for _ in range(4):
            x, y = (torch.rand(2, generator=generator) * 150).tolist()
            w, h = (torch.rand(2, generator=generator) * 40 + 8).tolist()
            category = int(torch.randint(1, 3, (1,), generator=generator))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})
            jitter = (torch.randn(4, generator=generator) * 3).tolist()
            detections.append({"image_id": image_id, "category_id": category,
                               "bbox": [x + jitter[0], y + jitter[1], w + jitter[2],
                                        h + jitter[3]],
                               "score": float(torch.rand(1, generator=generator))})
    ground_truth.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    ground_truth.createIndex()
    stats = []
    for evaluator_class in (COCOeval, COCOeval_opt):
        evaluator = evaluator_class(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats.append(evaluator.stats)
    assert 0.1 < stats[0][0] < 1.0  # a non-trivial AP, so equality means something
    assert stats[1].tolist() == pytest.approx(stats[0].tolist(), abs=1e-12)


@requires_missing_extension
def test_extension_stand_in_installed_when_extension_missing() -> None:
    import detectron2.engine  # noqa: F401  (each of these imports detectron2._C in v0.6)
    import detectron2.evaluation  # noqa: F401
    import detectron2.modeling  # noqa: F401

    assert not compat.has_compiled_extension()
    assert isinstance(sys.modules["detectron2._C"], compat._MissingExtensionModule)


def test_import_bridges_act_only_while_their_module_imports() -> None:
    # Both routes: setuptools >= 81 has no pkg_resources and Pillow >= 10 no Image.LINEAR;
    # the stand-ins exist only while detectron2's modules that need them execute.
    result = run_python(
        """
        import importlib.util, inspect, sys
        from PIL import Image
        had_pkg_resources = importlib.util.find_spec("pkg_resources") is not None
        had_linear = hasattr(Image, "LINEAR")
        import retinanet_ext
        import detectron2.data.transforms as T
        from detectron2 import model_zoo
        path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        assert path.endswith("retinanet_R_50_FPN_1x.yaml"), path
        interp = inspect.signature(T.ExtentTransform.__init__).parameters["interp"].default
        assert interp == Image.BILINEAR, interp
        if not had_pkg_resources:
            assert "pkg_resources" not in sys.modules
            assert importlib.util.find_spec("pkg_resources") is None
        assert hasattr(Image, "LINEAR") == had_linear
        print("SCOPED-OK", had_pkg_resources, had_linear)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "SCOPED-OK" in result.stdout
    if "SCOPED-OK False False" not in result.stdout:
        pytest.skip(f"pkg_resources/Image.LINEAR exist here, nothing to bridge: {result.stdout}")


def test_import_bridges_inert_when_real_modules_exist() -> None:
    result = run_python(
        """
        import sys, types
        from PIL import Image
        real_pkg_resources = types.ModuleType("pkg_resources")
        real_pkg_resources.resource_filename = lambda package, name: "from real pkg_resources"
        sys.modules["pkg_resources"] = real_pkg_resources
        Image.LINEAR = "original LINEAR"

        import retinanet_ext
        import detectron2.data.transforms as T
        from detectron2 import model_zoo
        import inspect
        assert sys.modules["pkg_resources"] is real_pkg_resources
        assert model_zoo.model_zoo.pkg_resources is real_pkg_resources
        assert Image.LINEAR == "original LINEAR"
        print("INERT-OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "INERT-OK" in result.stdout


def test_jit_script_deprecation_silenced_on_import_only(tmp_path) -> None:
    script = tmp_path / "script_after_import.py"  # a file: torch.jit.script reads the source
    script.write_text(textwrap.dedent(
        """
        import sys, warnings
        import retinanet_ext
        import detectron2.engine, detectron2.evaluation, detectron2.modeling, fvcore.nn
        print("--- imported ---", file=sys.stderr, flush=True)
        warnings.warn("a different FutureWarning", FutureWarning)
        import torch

        def double(x: torch.Tensor) -> torch.Tensor:
            return 2 * x

        torch.jit.script(double)
        """
    ))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    on_import, after = result.stderr.split("--- imported ---")
    assert "torch.jit.script` is deprecated" not in on_import, on_import
    assert "FutureWarning: a different FutureWarning" in after
    if "torch.jit.script` is deprecated" not in after:
        pytest.skip("this torch does not deprecate torch.jit.script: nothing to silence")


def test_create_ddp_model_is_detectron2s_own_in_this_process() -> None:
    import detectron2.engine
    from detectron2.engine import defaults

    assert defaults.create_ddp_model.__module__ == "detectron2.engine.defaults"
    assert detectron2.engine.create_ddp_model is defaults.create_ddp_model


def test_find_free_port_can_be_bound() -> None:
    port = compat.find_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


LAUNCH_SCRIPT = """
import json, sys

from retinanet_ext import compat

import torch


def main(output: str) -> None:
    from detectron2.engine import create_ddp_model
    from detectron2.utils import comm

    model = create_ddp_model(torch.nn.Linear(2, 1), broadcast_buffers=False)
    model(torch.full((1, 2), float(comm.get_rank() + 1))).sum().backward()
    result = {"rank": comm.get_rank(), "local_rank": comm.get_local_rank(),
              "local_size": comm.get_local_size(), "ddp": type(model).__name__,
              "grad": model.module.weight.grad.tolist()}
    with open(f"{output}/rank{comm.get_rank()}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    compat.launch(main, 2, dist_url="auto", args=(sys.argv[1],))
"""


@pytest.mark.slow
def test_launch_cpu_processes_with_local_group_and_ddp(tmp_path) -> None:
    # Both builds: the local process group (public setter or v0.6's module global) and
    # create_ddp_model without device_ids in the workers; DDP averages the gradients.
    import json

    if torch.cuda.is_available():
        pytest.skip("with CUDA, compat.launch is Detectron2's launch unchanged")
    script = tmp_path / "launch_two.py"
    script.write_text(LAUNCH_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                            text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["local_rank"], r["local_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert {r["ddp"] for r in ranks} == {"DistributedDataParallel"}
    assert ranks[0]["grad"] == ranks[1]["grad"] == [[1.5, 1.5]]  # mean of inputs 1 and 2


@requires_missing_extension
def test_rotated_box_iou_fails_with_clear_message() -> None:
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]]))
    with pytest.raises(compat.MissingCompiledExtensionError) as error:
        pairwise_iou_rotated(boxes, boxes)
    message = str(error.value)
    assert "detectron2._C.box_iou_rotated" in message
    assert "git+https://github.com/facebookresearch/detectron2.git" in message


@requires_missing_extension
def test_rotated_nms_fails_with_clear_message() -> None:
    from detectron2.layers import batched_nms_rotated, nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    scores = torch.tensor([0.9])
    with pytest.raises(compat.MissingCompiledExtensionError, match="nms_rotated"):
        nms_rotated(boxes, scores, 0.5)
    with pytest.raises(compat.MissingCompiledExtensionError, match="nms_rotated"):
        batched_nms_rotated(boxes, scores, torch.tensor([0]), 0.5)


@requires_missing_extension
def test_fast_coco_evaluator_fails_with_clear_message() -> None:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO

    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": 1, "width": 20, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
             "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    ground_truth.createIndex()
    detections = ground_truth.loadRes([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                                        "score": 0.9}])
    evaluator = COCOeval_opt(ground_truth, detections, "bbox")
    expected = "detectron2._C.InstanceAnnotation"
    with pytest.raises(compat.MissingCompiledExtensionError, match=expected):
        evaluator.evaluate()


def test_collect_env_reports_the_extension_state() -> None:
    import detectron2
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    location = f"{detectron2.__version__} @{Path(detectron2.__file__).parent}"
    assert location in info, info
    compiler_row = next(line for line in info.splitlines() if line.startswith("Compiler "))
    if compat.has_compiled_extension():
        assert "not built" not in compiler_row and "GCC" in compiler_row, compiler_row
    else:
        assert "not built (detectron2._C missing)" in compiler_row, compiler_row


def test_describe_detectron2_names_version_and_extension_state() -> None:
    import detectron2

    line = compat.describe_detectron2()
    assert line.startswith(f"detectron2 {detectron2.__version__} (")
    assert str(Path(detectron2.__file__).parent) in line
    expected = "present" if compat.has_compiled_extension() else "missing"
    assert f"detectron2._C {expected}" in line, line


def test_import_leaves_torch_load_allow_list_alone() -> None:
    # Weights-only loading is allow-listed per load (retinanet_ext.checkpoint), not by compat.
    result = run_python(
        """
        import torch
        import retinanet_ext
        import detectron2.engine, detectron2.checkpoint
        added = [g for g in torch.serialization.get_safe_globals()
                 if not getattr(g, "__module__", "").startswith("torch.")]  # torch's own DTensor
        print("ADDED", added)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ADDED []" in result.stdout, result.stdout


# -- no patching at import: the bridges come from the venv's start-up hook, not the package --

SNAPSHOT = """
import sys, types

def snapshot():
    modules = {name: module for name, module in sys.modules.items()
               if name.split(".")[0] in ("detectron2", "fvcore", "PIL") and module is not None}
    attributes = {name: {key: id(value) for key, value in vars(module).items()}
                  for name, module in modules.items()}
    return attributes, list(sys.meta_path), list(sys.path_hooks), list(sys.path)
"""


def test_import_changes_no_attribute_of_detectron2_fvcore_or_pillow() -> None:
    result = run_python(SNAPSHOT + textwrap.dedent("""
        import detectron2, detectron2.modeling, detectron2.engine, detectron2.data
        import detectron2.checkpoint, detectron2.evaluation, detectron2.config
        import fvcore.common.checkpoint, fvcore.nn
        from PIL import Image
        before, meta_path, path_hooks, path = snapshot()
        import retinanet_ext
        after, meta_path_after, path_hooks_after, path_after = snapshot()
        replaced = [f"{name}.{key}" for name, values in before.items()
                    for key, ident in values.items() if after[name].get(key, ident) != ident]
        removed = [f"{name}.{key}" for name, values in before.items()
                   for key in values if key not in after[name]]
        added = [f"{name}.{key}" for name, values in before.items() for key, ident in
                 after[name].items() if key not in values
                 and not isinstance(sys.modules[name].__dict__[key], types.ModuleType)]
        new_modules = [name for name in after if name not in before]
        stand_ins = [name for name in new_modules
                     if getattr(sys.modules[name], "__retinanet_ext_bridge__", False)
                     or not getattr(sys.modules[name], "__file__", None)]
        assert not replaced, f"replaced by import retinanet_ext: {replaced}"
        assert not removed, f"removed by import retinanet_ext: {removed}"
        assert not added, f"added by import retinanet_ext: {added}"
        assert not stand_ins, f"stand-in modules: {stand_ins}"
        assert meta_path_after == meta_path and path_hooks_after == path_hooks, "import hook"
        assert path_after == path, "sys.path changed"
        from detectron2.modeling import META_ARCH_REGISTRY
        assert "RetinaNetExt" in META_ARCH_REGISTRY
        print("UNCHANGED", len(before), "modules compared")
        """))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "UNCHANGED" in result.stdout, result.stdout


def test_detectron2_works_in_a_fresh_interpreter_without_retinanet_ext() -> None:
    # Whatever a user's script imports first: the venv's start-up hook bridges Detectron2.
    result = run_python("""
        import sys
        from detectron2.engine import DefaultTrainer
        from detectron2.data import build_detection_train_loader
        from detectron2 import model_zoo
        model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        assert "retinanet_ext" not in sys.modules, "the package was imported"
        print("D2-OK")
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "D2-OK" in result.stdout


def test_venv_has_the_startup_hook_as_set_up_writes_it(tmp_path: Path) -> None:
    import sysconfig

    installed = Path(sysconfig.get_paths()["purelib"]) / compat.STARTUP_HOOK_NAME
    assert installed.is_file(), f"./run writes {installed}"
    written = compat.install_startup_hook(tmp_path)
    assert installed.read_text() == written.read_text()
    assert compat.bridges_installed()


@requires_missing_extension
def test_import_without_the_bridges_says_what_to_do() -> None:
    # PyPI's v0.6 on today's packages cannot import without them: the error says how to fix it.
    result = run_python("""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path
                            if not getattr(f, "__retinanet_ext_bridge__", False)]
        import retinanet_ext
        """)
    assert result.returncode != 0
    assert "--install-startup-hook" in result.stderr, result.stderr[-2000:]


def test_compat_is_one_module_object() -> None:
    # The start-up hook executes compat.py as retinanet_ext.compat; the package reuses it.
    import retinanet_ext

    assert retinanet_ext.compat is sys.modules["retinanet_ext.compat"] is compat
    assert compat.IMPORT_BRIDGES in sys.meta_path


def test_every_private_name_the_project_touches_is_present() -> None:
    # docs/compat.md lists them; a Detectron2, fvcore or numpy release that drops one fails here.
    assert compat.PRIVATE_NAMES
    assert compat.missing_private_names() == []


def test_private_names_are_all_listed_in_the_docs() -> None:
    page = (REPO_ROOT / "docs" / "compat.md").read_text()
    for entry in compat.PRIVATE_NAMES:
        assert f"`{entry.name}`" in page, f"docs/compat.md does not list {entry.name}"
