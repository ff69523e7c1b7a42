"""Reading checkpoints never runs code: hostile .pkl/.pth files are refused (naming the file and
the global), legitimate Detectron2 model-zoo and Caffe2 files still load and are renamed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoint_helpers import (
    build_tiny_model,
    write_caffe2_backbone_pkl,
    write_hostile_pkl,
    write_hostile_pth,
    write_model_zoo_pkl,
)
from iopath.common.file_io import PathHandler

from retinanet_ext.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    load_weights,
    read_checkpoint,
)


@pytest.fixture(scope="module")
def source_model() -> torch.nn.Module:
    return build_tiny_model(seed=1)


@pytest.fixture
def target_model() -> torch.nn.Module:
    return build_tiny_model(seed=2)


def assert_same_weights(a: dict, b: dict, keys) -> None:
    keys = list(keys)
    assert keys
    for key in keys:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("how,protocol,forbidden", [
    ("shell", 2, "posix.system"), ("shell", 0, "posix.system"), ("shell", 5, "posix.system"),
    ("python", 4, "builtins.exec"), ("in_array", 2, "posix.system"), ("top", 2, "posix.system"),
])
def test_hostile_pkl_is_refused_and_runs_nothing(
    tmp_path: Path, target_model, how: str, protocol: int, forbidden: str
) -> None:
    sentinel = tmp_path / "PWNED"
    path = write_hostile_pkl(tmp_path / "model_final_abc.pkl", sentinel, how, protocol)
    before = {k: v.clone() for k, v in target_model.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError) as error:
        load_weights(target_model, str(path))
    assert f"checkpoint {path} is refused" in str(error.value)
    assert forbidden in str(error.value)
    assert not sentinel.exists()
    assert_same_weights(before, target_model.state_dict(), before)  # nothing half-loaded


@pytest.mark.parametrize("how", ["zip", "legacy", "raw"])
def test_hostile_pth_is_refused_and_runs_nothing(tmp_path: Path, target_model, how: str) -> None:
    sentinel = tmp_path / "PWNED"
    path = write_hostile_pth(tmp_path / "model_final.pth", sentinel, how)
    with pytest.raises(UnsafeCheckpointError, match=r"is refused.*posix\.system") as error:
        load_weights(target_model, str(path))
    assert str(path) in str(error.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_detectron2_model_zoo_pkl_loads(
    tmp_path: Path, source_model, target_model, protocol: int
) -> None:
    path = write_model_zoo_pkl(tmp_path / "model_final_f10217.pkl", source_model, protocol)
    entries = load_weights(target_model, str(path))
    assert entries["__author__"] == "Detectron2 Model Zoo"
    source = source_model.state_dict()
    assert_same_weights(source, target_model.state_dict(), source)


@pytest.mark.parametrize("blobs", [False, True], ids=["imagenet", "blobs"])
def test_caffe2_backbone_pkl_is_renamed_as_detectron2_does(
    tmp_path: Path, source_model, target_model, blobs: bool
) -> None:
    path = write_caffe2_backbone_pkl(tmp_path / "R-18.pkl", source_model, blobs=blobs)
    untouched = {k: v.clone() for k, v in target_model.state_dict().items()
                 if not k.startswith("backbone.bottom_up.")}
    entries = load_weights(target_model, str(path))
    assert entries["__author__"] == "Caffe2"
    loaded = target_model.state_dict()
    renamed = [k for k in loaded if k.startswith("backbone.bottom_up.")
               and not k.endswith("num_batches_tracked")]
    assert len(renamed) == 20 * 5  # ResNet-18: 20 convs (stem, 16 in blocks, 3 shortcuts)
    assert_same_weights(source_model.state_dict(), loaded, renamed)
    assert_same_weights(untouched, loaded, untouched)  # FPN and head keep their init


def test_pth_returns_the_other_entries(tmp_path: Path, source_model, target_model) -> None:
    path = tmp_path / "model_0000009.pth"
    metadata = {"thing_classes": ["a"], "input_format": "BGR", "datasets": [], "version": 1}
    torch.save({"model": source_model.state_dict(), "iteration": 9,
                "retinanet_ext_metadata": metadata}, path)
    entries = load_weights(target_model, str(path))
    assert entries == {"iteration": 9, "retinanet_ext_metadata": metadata}
    source = source_model.state_dict()
    assert_same_weights(source, target_model.state_dict(), source)


def test_bare_state_dict_of_numpy_arrays_loads(tmp_path: Path, source_model, target_model):
    path = tmp_path / "weights.pth"
    torch.save({k: v.numpy() for k, v in source_model.state_dict().items()}, path)
    load_weights(target_model, str(path))
    source = source_model.state_dict()
    assert_same_weights(source, target_model.state_dict(), source)


def test_matching_heuristics_query_renames_a_pth(tmp_path: Path, source_model, target_model):
    prefix = "backbone.bottom_up."
    path = tmp_path / "resnet.pth"
    torch.save({k[len(prefix):]: v for k, v in source_model.state_dict().items()
                if k.startswith(prefix)}, path)
    with pytest.raises(CheckpointError, match="holds none of this model's parameters"):
        load_weights(target_model, str(path))
    load_weights(target_model, f"{path}?matching_heuristics=True")
    loaded = target_model.state_dict()
    assert_same_weights(source_model.state_dict(), loaded,
                        [k for k in loaded if k.startswith(prefix)])


@pytest.mark.parametrize("content,message", [
    (b"", "could not be read"),
    (b"not a checkpoint at all", "could not be read"),
])
def test_damaged_files_are_damaged_not_hostile(tmp_path: Path, target_model, content, message):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(DamagedCheckpointError, match=message):
        load_weights(target_model, str(path))


def test_truncated_files(tmp_path: Path, source_model, target_model) -> None:
    good = write_model_zoo_pkl(tmp_path / "good.pkl", source_model)
    truncated_pkl = tmp_path / "truncated.pkl"
    truncated_pkl.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"model": source_model.state_dict()}, tmp_path / "good.pth")
    truncated_pth = tmp_path / "truncated.pth"
    truncated_pth.write_bytes((tmp_path / "good.pth").read_bytes()[:100_000])
    for path in (truncated_pkl, truncated_pth):
        with pytest.raises(DamagedCheckpointError, match=f"checkpoint {path} could not be read"):
            read_checkpoint(str(path))


def test_other_clear_errors(tmp_path: Path, target_model) -> None:
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS is empty"):
        load_weights(target_model, "")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope.pth'} does not"):
        load_weights(target_model, str(tmp_path / "nope.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        load_weights(target_model, str(tmp_path / "list.pth"))
    torch.save({"model": {"other.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="holds none of this model's parameters"):
        load_weights(target_model, str(tmp_path / "other.pth"))
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": "x"}}, tmp_path / "str.pth")
    with pytest.raises(CheckpointError, match="holds a str under model weight"):
        load_weights(target_model, str(tmp_path / "str.pth"))


class _PlantedDownloads(PathHandler):
    """``planted://NAME`` "downloads" to a local file, as Detectron2's URL handlers do."""

    folder: Path | None = None
    registered = False

    def _get_supported_prefixes(self) -> list[str]:
        return ["planted://"]

    def _get_local_path(self, path: str, **kwargs) -> str:
        return str(self.folder / path[len("planted://"):])

    def _isfile(self, path: str, **kwargs) -> bool:
        return False  # a URL, not a local file


_HANDLER = _PlantedDownloads()


@pytest.fixture
def planted_urls(tmp_path: Path) -> Path:
    from detectron2.utils.file_io import PathManager

    if not _HANDLER.registered:
        PathManager.register_handler(_HANDLER)
        _HANDLER.registered = True
    _PlantedDownloads.folder = tmp_path
    return tmp_path


def test_urls_are_read_safely_after_download(planted_urls: Path, source_model, target_model):
    sentinel = planted_urls / "PWNED"
    write_hostile_pkl(planted_urls / "evil.pkl", sentinel)
    write_hostile_pth(planted_urls / "evil.pth", sentinel)
    for name in ("evil.pkl", "evil.pth"):
        with pytest.raises(UnsafeCheckpointError, match="posix.system"):
            load_weights(target_model, f"planted://{name}")
    assert not sentinel.exists()
    write_model_zoo_pkl(planted_urls / "good.pkl", source_model)
    assert load_weights(target_model, "planted://good.pkl")["__author__"]
    source = source_model.state_dict()
    assert_same_weights(source, target_model.state_dict(), source)


def test_numpy_object_arrays_of_plain_data_still_load(tmp_path: Path) -> None:
    import pickle

    data = {"model": {"w": np.ones(3, np.float32)}, "names": np.array(["a", 1], dtype=object),
            "__author__": "x", "scalar": np.float64(2.5), "set": {1, 2}}
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(data, protocol=2))
    loaded = read_checkpoint(str(tmp_path / "plain.pkl"))
    assert loaded["scalar"] == 2.5 and list(loaded["names"]) == ["a", 1]
