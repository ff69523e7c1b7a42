"""ONNX and TorchScript export: parity with PyTorch on image sizes not seen at export, the
metadata inside the file, a runtime without torch, and a verification that can fail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (requirements/test.txt installs it: missing is a failure)
import pytest

from retinanet_ext import Predictor
from retinanet_ext.export import ExportedModel, export_model, verify_export
from retinanet_ext.export.runtime import METADATA_KEY, Detections
from retinanet_ext.export.verify import compare_detections, sample_images
from tests._predict_helpers import CLASSES, QUICK_CONFIG, TINY_OPTS, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
# Export traces at 160x214 (the config's test size); these give other network inputs.
UNSEEN_SIZES = [(333, 517), (600, 401), (97, 300)]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return Predictor(QUICK_CONFIG, str(checkpoint), opts=TINY_OPTS)


@pytest.fixture(scope="module")
def exported(predictor: Predictor, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("exported")
    return {"onnx": export_model(predictor, folder / "tiny.onnx", "onnx"),
            "torchscript": export_model(predictor, folder / "tiny.ts", "torchscript")}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_with_pytorch_on_unseen_sizes(predictor, exported, fmt: str) -> None:
    report = verify_export(predictor, exported[fmt], sample_images(UNSEEN_SIZES, seed=5))
    print(report.format())
    assert report.passed, report.format()
    network_sizes = {image.network_size for image in report.images}
    assert len(network_sizes) == 3 and (160, 214) not in network_sizes
    assert all(image.num_reference > 5 for image in report.images)  # real comparisons
    assert all(image.max_box_diff <= 1e-2 and image.max_score_diff <= 1e-4
               for image in report.images)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_batches_of_different_sizes_match_pytorch(predictor, exported, fmt: str) -> None:
    images = sample_images(UNSEEN_SIZES[:2], seed=6)
    predictor.batch_size = 2
    reference = predictor(images, rgb=True)
    results = ExportedModel(exported[fmt], batch_size=2)(images, rgb=True)
    for ref, res in zip(reference, results, strict=True):
        same_classes, box_diff, score_diff = compare_detections(ref, res)
        assert same_classes and box_diff <= 1e-2 and score_diff <= 1e-4
        assert sorted(res.class_names) == sorted(ref.class_names)


def test_the_file_carries_what_the_runtime_needs(exported) -> None:
    import onnx

    model = onnx.load(exported["onnx"])
    assert model.opset_import[0].version >= 17
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["thing_classes"] == list(CLASSES)
    assert meta["strides"] == [8, 16, 32, 64, 128] and len(meta["cell_anchors"]) == 5
    assert meta["score_thresh"] == pytest.approx(0.3)
    assert (meta["min_size_test"], meta["max_size_test"]) == (160, 224)
    dims = [d.dim_param or d.dim_value for d in
            model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    assert ExportedModel(exported["torchscript"]).metadata == meta


def test_runs_without_torch(predictor, exported, tmp_path: Path) -> None:
    image = sample_images([(300, 450)], seed=8)[0]
    reference = predictor(image, rgb=True)
    np.save(tmp_path / "image.npy", image)
    deployment = tmp_path / "deployment"  # the two files docs/use.md says to copy
    deployment.mkdir()
    for name in ("export/runtime.py", "structures.py"):
        shutil.copy(REPO_ROOT / "retinanet_ext" / name, deployment)
    script = (
        "import json, sys\n"
        "for name in ('torch', 'detectron2', 'retinanet_ext'): sys.modules[name] = None\n"
        f"sys.path.insert(0, {str(deployment)!r})\n"
        "import runtime\n"
        "import numpy as np\n"
        f"image = np.load({str(tmp_path / 'image.npy')!r})\n"
        f"dets = runtime.ExportedModel({exported['onnx']!r})(image, rgb=True)\n"
        "print(json.dumps({'boxes': dets.boxes.tolist(), 'scores': dets.scores.tolist(),\n"
        "                  'ids': dets.class_ids.tolist(), 'names': dets.class_names}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    torch_free = Detections(np.asarray(out["boxes"], np.float32),
                            np.asarray(out["scores"], np.float32), np.asarray(out["ids"]),
                            out["names"], image.shape[:2])
    assert sorted(torch_free.class_names) == sorted(reference.class_names)
    assert len(torch_free) > 10
    assert compare_detections(reference, torch_free)[0]
    assert max(compare_detections(reference, torch_free)[1:]) <= 1e-2


def test_verification_fails_on_a_different_model(predictor, tmp_path: Path) -> None:
    other = Predictor(QUICK_CONFIG, str(write_tiny_checkpoint(tmp_path / "o.pth", seed=1)),
                      opts=TINY_OPTS)
    path = export_model(other, tmp_path / "other.ts", "torchscript")
    report = verify_export(predictor, path, sample_images([(200, 260)]))
    assert not report.passed
    assert "FAILED" in report.format()


def test_compare_detections_sees_each_kind_of_difference() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], dtype=np.float32)
    base = Detections(boxes, np.array([0.9, 0.8], np.float32), np.array([0, 1]), ["a", "b"],
                      (30, 30))

    def variant(**changes) -> Detections:
        fields = {"boxes": boxes.copy(), "scores": base.scores.copy(),
                  "class_ids": base.class_ids.copy(), "class_names": ["a", "b"],
                  "image_size": (30, 30)}
        fields.update(changes)
        return Detections(**fields)

    assert compare_detections(base, variant()) == (True, 0.0, 0.0)
    assert compare_detections(base, variant(boxes=boxes + 0.02))[1] == pytest.approx(0.02, abs=1e-5)
    score_diff = compare_detections(base, variant(scores=base.scores - 1e-3))[2]
    assert score_diff == pytest.approx(1e-3, abs=1e-6)
    assert not compare_detections(base, variant(class_ids=np.array([0, 2])))[0]
    one = Detections(boxes[:1], base.scores[:1], base.class_ids[:1], ["a"], (30, 30))
    assert not compare_detections(base, one)[0]
    # Near-equal scores in another order are paired by class and box, not by position.
    swapped = variant(boxes=boxes[::-1].copy(), scores=base.scores[::-1].copy(),
                      class_ids=base.class_ids[::-1].copy())
    assert compare_detections(base, swapped) == (True, 0.0, 0.0)


def test_bad_requests_are_refused(predictor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_model(predictor, tmp_path / "m.onnx", "onnx", opset=13)
    with pytest.raises(ValueError, match="format"):
        export_model(predictor, tmp_path / "m.bin", "tensorrt")
    not_a_model = tmp_path / "text.onnx"
    not_a_model.write_text("hello")
    with pytest.raises(Exception, match="text.onnx"):
        ExportedModel(not_a_model)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExportedModel(tmp_path / "missing.onnx")


def test_openvino_runs_the_onnx_file(predictor, exported) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install openvino)")
    report = verify_export(predictor, exported["onnx"], sample_images(UNSEEN_SIZES[:2]),
                           backend="openvino")
    assert report.backend == "openvino"
    assert report.passed, report.format()


def run_bench_runtime(out: Path, *args: str) -> dict:
    """benchmarks/bench_runtime.py on a tiny size, one run each; its saved JSON."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_runtime.py"), "--size", "96x128",
         "--depth", "18", "--repeats", "1", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.once
@pytest.mark.slow
def test_bench_runtime_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_runtime.py runs end to end on a tiny size (plumbing, not speed)."""
    out = tmp_path / "runtime.md"
    rows = run_bench_runtime(out, "--variants", "channels_last", "--int8")["rows"]
    names = [row["runner"] for row in rows]
    assert names[:4] == ["retinanet_ext PyTorch", "retinanet_ext PyTorch channels_last",
                         "Detectron2 RetinaNet PyTorch", "onnxruntime (exported)"]
    assert all(row["median_s"] > 0 for row in rows)
    assert "classes same" in rows[1]["parity"] and "classes same" in rows[3]["parity"]
    assert "| onnxruntime (exported) |" in out.read_text()
    assert "onnxruntime int8 (export --int8)" in names


@pytest.mark.once
@pytest.mark.slow
def test_bench_runtime_avx2_emulation_smoke(tmp_path: Path) -> None:
    """--isa avx2 restarts with PyTorch and oneDNN held to AVX2 and leaves onnxruntime out."""
    saved = run_bench_runtime(tmp_path / "runtime_avx2.md", "--isa", "avx2")
    assert saved["info"]["cpu_capability"] in ("AVX2", "DEFAULT")  # never AVX512 under the cap
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in saved["info"]["isa"]
    names = [row["runner"] for row in saved["rows"]]
    assert "Detectron2 RetinaNet PyTorch" in names
    assert not any(name.startswith("onnxruntime") for name in names)
