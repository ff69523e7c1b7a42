"""Fine-tuning from pretrained weights (configs/finetune/, ``retinanet-ext convert-weights``),
tested with files built from models' own weights in each format: Detectron2's ImageNet
backbones (Caffe2 names), a COCO-trained RetinaNet (model-zoo .pkl), torchvision ResNets."""

from __future__ import annotations

import math
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from torch import nn

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.checkpoint import RetinaNetExtCheckpointer, load_weights
from retinanet_ext.engine import load_config
from retinanet_ext_cli import main
from retinanet_ext_cli.convert_weights import torchvision_to_detectron2_key
from tests._checkpoint_helpers import write_caffe2_backbone_pkl, write_hostile_pth
from tests.test_sweep import localise, readme_commands

REPO_ROOT = Path(__file__).resolve().parent.parent
FINETUNE = REPO_ROOT / "configs" / "finetune"
CPU = ["MODEL.DEVICE", "cpu"]
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


def _model(config: str, *opts: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(load_config(str(FINETUNE / config), [*CPU, *opts])).eval()


def _state(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def _randomise_norms(model: nn.Module) -> None:
    """Norm parameters and statistics away from their 1/0 defaults, so a load is visible."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if ".norm." in name or name.startswith("bn") or ".bn" in name:
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


def test_configs_load_and_name_the_weights() -> None:
    expected = {
        "retinanet_R50_FPN_imagenet.yaml": ("detectron2://ImageNetPretrained/MSRA/R-50.pkl", 50),
        "retinanet_R101_FPN_imagenet.yaml": ("detectron2://ImageNetPretrained/MSRA/R-101.pkl",
                                             101),
        "retinanet_R50_FPN_coco.yaml": ("detectron2://COCO-Detection/retinanet_R_50_FPN_3x/"
                                        "190397829/model_final_5bd44e.pkl", 50),
        "retinanet_R50_FPN_torchvision.yaml": ("output/weights/resnet50_torchvision.pkl", 50),
    }
    assert sorted(p.name for p in FINETUNE.glob("*.yaml")) == sorted(expected)
    for name, (weights, depth) in expected.items():
        cfg = load_config(str(FINETUNE / name))
        assert (cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH) == (weights, depth)
        assert cfg.MODEL.META_ARCHITECTURE == "RetinaNetExt"
        torchvision_input = name.endswith("torchvision.yaml")
        assert cfg.INPUT.FORMAT == ("RGB" if torchvision_input else "BGR")
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is not torchvision_input


@pytest.mark.slow
def test_imagenet_backbone_loads_into_the_bottom_up_only(tmp_path: Path) -> None:
    """MSRA's R-50.pkl format (Caffe2 blob names, no "model" entry) renamed on load."""
    narrow = ["MODEL.FPN.OUT_CHANNELS", "64"]  # the FPN and head are not loaded: keep them small
    source = _model("retinanet_R50_FPN_imagenet.yaml", *narrow, seed=1)
    _randomise_norms(source.backbone.bottom_up)
    path = write_caffe2_backbone_pkl(tmp_path / "R-50.pkl", source)  # res2_0_branch2c_w, ...
    target = _model("retinanet_R50_FPN_imagenet.yaml", *narrow, seed=2)
    before = _state(target)
    RetinaNetExtCheckpointer(target).resume_or_load(str(path), resume=False)  # the Trainer's
    after, wanted = _state(target), _state(source)
    bottom_up = [k for k in after if k.startswith("backbone.bottom_up.")]
    assert len(bottom_up) == 53 + 53 * 4  # 53 convs, each with a FrozenBN (4 entries)
    assert [k for k in bottom_up if not torch.equal(after[k], wanted[k])] == []
    rest = [k for k in after if k not in bottom_up]
    assert [k for k in rest if not torch.equal(after[k], before[k])] == []


@pytest.mark.parametrize("heuristics", [False, True], ids=["plain", "matching_heuristics"])
def test_coco_checkpoint_reinitialises_the_class_head(tmp_path: Path, heuristics: bool,
                                                      caplog) -> None:
    """A "COCO" RetinaNet (80 classes) loaded into a 3-class model: everything but
    head.cls_score comes from it; head.cls_score keeps the prior initialisation."""
    coco = _model("retinanet_R50_FPN_coco.yaml", *R18, "MODEL.RETINANET.NUM_CLASSES", "80",
                  "MODEL.FPN.OUT_CHANNELS", "64", seed=1)
    data = {"model": {k: v.numpy().copy() for k, v in coco.state_dict().items()},
            "__author__": "Detectron2 Model Zoo"}
    if heuristics:
        data["matching_heuristics"] = True
    path = tmp_path / "model_final_5bd44e.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))

    target = _model("retinanet_R50_FPN_coco.yaml", *R18, "MODEL.FPN.OUT_CHANNELS", "64", seed=2)
    initial_cls = _state(target, "head.cls_score.")
    with caplog.at_level("WARNING"):
        load_weights(target, str(path))
    after, wanted = _state(target), _state(coco)
    class_head = {"head.cls_score.weight", "head.cls_score.bias"}
    assert [k for k in after if k not in class_head and not torch.equal(after[k], wanted[k])] == []
    assert tuple(after["head.cls_score.weight"].shape) == (9 * 3, 64, 3, 3)
    assert all(torch.equal(after[k], v) for k, v in initial_cls.items())
    prior_bias = -math.log((1 - 0.01) / 0.01)  # paper Sec. 4.1, pi = 0.01
    assert after["head.cls_score.bias"].tolist() == pytest.approx([prior_bias] * 27)
    assert "head.cls_score.weight" in caplog.text  # Detectron2 says it skipped it


def test_torchvision_key_names() -> None:
    cases = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv3.weight": "res2.0.conv3.weight",
        "layer2.3.bn2.bias": "res3.3.conv2.norm.bias",
        "layer4.0.downsample.0.weight": "res5.0.shortcut.weight",
        "layer3.0.downsample.1.running_mean": "res4.0.shortcut.norm.running_mean",
        "fc.weight": None,
        "layer1.0.bn1.num_batches_tracked": None,
    }
    assert {k: torchvision_to_detectron2_key(k) for k in cases} == cases


@pytest.mark.parametrize("arch, depth", [
    ("resnet18", 18), pytest.param("resnet50", 50, marks=pytest.mark.slow)])
def test_torchvision_weights_give_torchvision_features(tmp_path: Path, capsys, arch: str,
                                                       depth: int) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None)
    _randomise_norms(reference)
    reference.eval()
    source = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), source)
    converted = tmp_path / "weights" / f"{arch}.pkl"
    assert main(["convert-weights", str(source), str(converted)]) == 0
    printed = capsys.readouterr().out
    assert f"torchvision ResNet-{depth}" in printed and f"MODEL.RESNETS.DEPTH {depth}" in printed

    opts = ["MODEL.WEIGHTS", str(converted), "MODEL.RESNETS.DEPTH", str(depth)]
    opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"] if depth == 18 else []
    model = _model("retinanet_R50_FPN_torchvision.yaml", *opts)
    load_weights(model, str(converted))
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone.bottom_up(image)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
        layers = [reference.layer1, reference.layer2, reference.layer3, reference.layer4]
        theirs = {}
        for stage, layer in zip(("res2", "res3", "res4", "res5"), layers, strict=True):
            x = theirs[stage] = layer(x)
    for stage in ("res3", "res4", "res5"):
        torch.testing.assert_close(ours[stage], theirs[stage], rtol=1e-4, atol=1e-4)
    # The config normalises as torchvision's ImageNet transforms do, on RGB input.
    assert model.input_format == "RGB"
    assert (model.pixel_mean.flatten() / 255).tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert (model.pixel_std.flatten() / 255).tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_convert_weights_errors(tmp_path: Path, capsys) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    source = tmp_path / "r18.pth"
    torch.save(state, source)
    existing = tmp_path / "existing.pkl"
    existing.write_bytes(b"keep me")

    def fails(*args: str) -> str:
        assert main(["convert-weights", *args]) == 2
        return capsys.readouterr().err

    assert "must end in .pkl" in fails(str(source), str(tmp_path / "out.pth"))
    assert "exists; pass --overwrite" in fails(str(source), str(existing))
    assert existing.read_bytes() == b"keep me"
    assert "does not exist" in fails(str(tmp_path / "missing.pth"), str(tmp_path / "a.pkl"))
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    assert "not a torchvision ResNet" in fails(str(tmp_path / "other.pth"),
                                               str(tmp_path / "b.pkl"))
    torch.save({**state, "layer1.0.se.fc.weight": torch.zeros(2)}, tmp_path / "se.pth")
    assert "'layer1.0.se.fc.weight' is not a key" in fails(str(tmp_path / "se.pth"),
                                                           str(tmp_path / "c.pkl"))
    sentinel = tmp_path / "pwned"
    hostile = write_hostile_pth(tmp_path / "hostile.pth", sentinel)
    assert "refused" in fails(str(hostile), str(tmp_path / "d.pkl"))
    assert not sentinel.exists()
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == ["existing.pkl"]


# Appended to the documented training commands: one iteration at 64 px, no download (MODEL.WEIGHTS
# is a local file of the downloaded one's format, built from a model's own weights).
TRAIN_TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
              "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "MODEL.DEVICE", "cpu",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()",
              "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0",
              "TEST.EVAL_PERIOD", "0"]


@pytest.mark.once
@pytest.mark.slow
def test_readme_finetune_commands(datasets_root: Path, tmp_path: Path) -> None:
    commands = readme_commands("## Fine-tuning from pretrained weights")
    assert [c.split()[1] for c in commands] == ["train_net.py", "convert-weights", "train_net.py"]
    coco = _model("retinanet_R50_FPN_coco.yaml", "MODEL.RETINANET.NUM_CLASSES", "80")
    coco_file = tmp_path / "model_final_5bd44e.pkl"
    coco_file.write_bytes(pickle.dumps({
        "model": {k: v.numpy().copy() for k, v in coco.state_dict().items()},
        "__author__": "Detectron2 Model Zoo"}, protocol=2))
    torchvision_file = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), torchvision_file)
    converted = tmp_path / "output" / "weights" / "resnet50_torchvision.pkl"
    weights = {"retinanet_R50_FPN_coco.yaml": coco_file,
               "retinanet_R50_FPN_torchvision.yaml": converted}
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for command in commands:
        argv = shlex.split(localise(command, datasets_root, tmp_path)
                           .replace("resnet50-11ad3fa6.pth", str(torchvision_file)))
        if argv[0] == "python":
            config = Path(argv[argv.index("--config-file") + 1]).name
            argv = [sys.executable, str(REPO_ROOT / argv[1]), *argv[2:], *TRAIN_TINY,
                    "MODEL.WEIGHTS", str(weights[config])]
        else:
            argv = [sys.executable, "-m", "retinanet_ext", *argv[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                cwd=REPO_ROOT, env=env)
        log = result.stdout + result.stderr
        assert result.returncode == 0, (command, log[-4000:])
        if "coco" in command:
            assert "head.cls_score.weight" in log  # skipped: 80 classes in the file, 3 here
        if "convert-weights" in command:
            assert "MODEL.RESNETS.DEPTH 50" in log
    for run in ("bccd_coco", "bccd_torchvision"):
        assert (tmp_path / "output" / run / "model_final.pth").is_file()
