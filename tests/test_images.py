"""Data as it really comes: truncated and undecodable files, EXIF rotation, every common image
kind, decompression bombs (through the training mapper and the Predictor's reader), and the
checks at start: train/test leakage, background images per split and the share kept."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image, ImageFile

from retinanet_ext.data import (
    DatasetError,
    register_coco_dataset,
    register_csv_dataset,
    split_checks,
)
from retinanet_ext.data.catalog import check_data, validate_dataset
from retinanet_ext.data.mapper import ImageDatasetMapper
from retinanet_ext.engine import ConfigError, load_config
from retinanet_ext.engine.dataset_checks import check_datasets_at_start, prepare_datasets
from retinanet_ext.evaluation.coco_evaluator import load_coco_ground_truth
from retinanet_ext.predictor import Predictor
from retinanet_ext.structures import ImageReadError, ImageTooLargeError, read_image_file
from tests._tiny_training import QUICK_CONFIG, REPO_ROOT, TINY_OPTS

WIDTH, HEIGHT = 64, 48


def _noise(seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))


def _sixteen_bit(path: Path) -> None:
    ramp = np.linspace(0, 65535, WIDTH * HEIGHT).reshape(HEIGHT, WIDTH).astype(np.uint16)
    Image.fromarray(ramp).save(path)  # mode I;16


#: kind -> (suffix, writer). Each reads as HEIGHT x WIDTH x 3 uint8.
KINDS = {
    "grayscale": (".png", lambda p: _noise().convert("L").save(p)),
    "grayscale JPEG": (".jpg", lambda p: _noise().convert("L").save(p)),
    "palette": (".png", lambda p: _noise().convert("P", palette=Image.Palette.ADAPTIVE).save(p)),
    "palette + transparency": (".png", lambda p: _noise().convert(
        "P", palette=Image.Palette.ADAPTIVE).save(p, transparency=0)),
    "RGBA": (".png", lambda p: _noise().convert("RGBA").save(p)),
    "16-bit PNG": (".png", _sixteen_bit),
    "CMYK JPEG": (".jpg", lambda p: _noise().convert("CMYK").save(p, "JPEG")),
    "WebP": (".webp", lambda p: _noise().save(p, "WEBP")),
    "TIFF": (".tif", lambda p: _noise().save(p, "TIFF")),
    "BMP": (".bmp", lambda p: _noise().save(p, "BMP")),
}


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in its pixel data: the header is whole, the end is missing."""
    _noise(7).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def _undecodable_jpeg(path: Path) -> Path:
    """A JPEG cut in its header, before any pixel: Pillow cannot open it even as truncated."""
    _noise(8).save(path)
    path.write_bytes(path.read_bytes()[:120])
    return path


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header declares width x height 8-bit RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def _csv_dataset(folder: Path, name: str, images: dict[str, list[tuple[int, ...]]]) -> str:
    """A CSV dataset of the images in ``folder`` (written beforehand), one class "dot"."""
    rows = []
    for image, boxes in images.items():
        rows += [f"{image},{x1},{y1},{x2},{y2},dot" for x1, y1, x2, y2 in boxes] or [
            f"{image},,,,,"]
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (folder / "classes.txt").write_text("dot\n")
    return register_csv_dataset(name, str(folder / f"{name}.csv"),
                                classes_file=str(folder / "classes.txt"))


def _cfg(tmp_path: Path, train: str | None = None, test: str | None = None, *opts: str):
    return load_config(QUICK_CONFIG, [
        *TINY_OPTS, "MODEL.RETINANET.NUM_CLASSES", "1",
        "INPUT.MIN_SIZE_TEST", str(HEIGHT), "INPUT.MAX_SIZE_TEST", str(WIDTH),
        "DATASETS.TRAIN", f"('{train}',)" if train else "()",
        "DATASETS.TEST", f"('{test}',)" if test else "()",
        "OUTPUT_DIR", str(tmp_path / "out"), *opts])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def pillow_untouched():
    """Pillow's module-wide switches are the same after the test as before it."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    yield
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


# --- every kind, through the Predictor's reader and the training mapper -----------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_reads_as_three_channel_uint8(kind: str, tmp_path: Path) -> None:
    suffix, write = KINDS[kind]
    path = tmp_path / f"image{suffix}"
    write(path)
    image, name = Predictor.load(str(path))
    assert name == str(path)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    mapper = ImageDatasetMapper(_cfg(tmp_path), is_train=False)
    mapped = mapper({"file_name": str(path), "height": HEIGHT, "width": WIDTH, "image_id": 0})
    assert mapped["image"].shape == (3, HEIGHT, WIDTH) and mapped["image"].dtype == torch.uint8
    # INPUT.FORMAT is BGR: the same pixels as the Predictor's, in the model's channel order
    np.testing.assert_array_equal(mapped["image"].numpy().transpose(1, 2, 0), image[:, :, ::-1])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    _sixteen_bit(tmp_path / "deep.png")
    ramp = np.asarray(Image.open(tmp_path / "deep.png")).astype(np.float64)
    ours = read_image_file(tmp_path / "deep.png").image
    np.testing.assert_allclose(np.asarray(ours)[:, :, 0], ramp / 257, atol=0.51)
    clipped = read_image(str(tmp_path / "deep.png"), format="RGB")  # Detectron2's own reader
    assert (clipped == 255).mean() > 0.9  # what the mapper's own reader avoids


# --- truncated and undecodable files ------------------------------------------------------


def test_truncated_jpeg_is_listed_once_and_trains(tmp_path: Path, new_name, caplog,
                                                  pillow_untouched) -> None:
    _noise(1).save(tmp_path / "good.jpg")
    _truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(OSError, match="truncated"):  # Detectron2's own reader stops on it
        read_image(str(tmp_path / "cut.jpg"))
    name = _csv_dataset(tmp_path, new_name("cut"), {
        "good.jpg": [(4, 4, 30, 30)], "cut.jpg": [(10, 10, 40, 40)]})
    with caplog.at_level(logging.WARNING):
        summary = validate_dataset(name)
    assert summary.num_images == 2 and summary.truncated_images == [str(tmp_path / "cut.jpg")]
    listing = [w for w in _warnings(caplog) if "truncated" in w]
    assert len(listing) == 1 and "1 truncated images" in listing[0] and "cut.jpg" in listing[0]
    assert "truncated images:     1" in summary.table()

    cfg = _cfg(tmp_path, name, name)
    from retinanet_ext.engine import Trainer

    batch = next(iter(Trainer.build_train_loader(cfg)))  # through the mapper, in training
    assert len(batch) == 2 and all(item["image"].shape[0] == 3 for item in batch)
    evaluated = [item["file_name"] for item in next(iter(Trainer.build_test_loader(cfg, name)))]
    assert evaluated == [str(tmp_path / "good.jpg")]
    read = read_image_file(tmp_path / "cut.jpg")
    assert read.truncated and np.asarray(read.image).shape == (HEIGHT, WIDTH, 3)


def test_undecodable_image_stops_the_run(tmp_path: Path, new_name) -> None:
    _noise(1).save(tmp_path / "good.png")
    _undecodable_jpeg(tmp_path / "broken.jpg")
    name = _csv_dataset(tmp_path, new_name("bad"), {
        "good.png": [(4, 4, 30, 30)], "broken.jpg": [(10, 10, 40, 40)]})
    with pytest.raises(DatasetError, match=r"(?s)1 images cannot be used.*broken\.jpg.*"
                                           r"--skip-bad-images"):
        validate_dataset(name)
    with pytest.raises(DatasetError, match=r"broken\.jpg"):  # so does any other way in
        DatasetCatalog.get(name)
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        prepare_datasets(_cfg(tmp_path, name))
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        Predictor.load(str(tmp_path / "broken.jpg"))


def _coco_dataset(folder: Path, name: str, images: dict[str, tuple[int, int]]) -> str:
    """A COCO dataset, one box on each image; ``images``: file -> (width, height) stated."""
    data = {"categories": [{"id": 1, "name": "dot"}], "images": [], "annotations": []}
    for image_id, (file_name, (width, height)) in enumerate(images.items(), start=1):
        data["images"].append({"id": image_id, "file_name": file_name, "width": width,
                               "height": height})
        data["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1,
                                    "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0})
    (folder / f"{name}.json").write_text(json.dumps(data))
    return register_coco_dataset(name, str(folder / f"{name}.json"), str(folder))


def test_skip_bad_images_drops_lists_and_writes_them(tmp_path: Path, new_name, capsys) -> None:
    _noise(1).save(tmp_path / "good.png")
    _undecodable_jpeg(tmp_path / "broken.jpg")
    _png_declaring(tmp_path / "huge.png", 20_000, 20_000)
    name = _coco_dataset(tmp_path, new_name("skip"), {
        "good.png": (WIDTH, HEIGHT), "broken.jpg": (WIDTH, HEIGHT), "huge.png": (20_000, 20_000)})
    cfg = _cfg(tmp_path, name, name, "DATALOADER.SKIP_BAD_IMAGES", "True")
    [summary] = prepare_datasets(cfg, [name])
    assert summary.num_images == 1 and summary.num_boxes == 1
    assert set(summary.dropped_images) == {str(tmp_path / "broken.jpg"), str(tmp_path / "huge.png")}
    assert "over the limit" in summary.dropped_images[str(tmp_path / "huge.png")]
    assert "dropped images:       2" in summary.table() and "broken.jpg" in summary.table()
    listed = (tmp_path / "out" / "dropped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == [
        str(tmp_path / "broken.jpg"), str(tmp_path / "huge.png")]
    assert [r["file_name"] for r in DatasetCatalog.get(name)] == [str(tmp_path / "good.png")]
    ground_truth = load_coco_ground_truth(name)  # the evaluator does not count them as missed
    assert [i["file_name"] for i in ground_truth["images"]] == ["good.png"]
    assert [a["image_id"] for a in ground_truth["annotations"]] == [1]


def test_skip_bad_images_flag_in_check_data(tmp_path: Path, new_name, capsys,
                                            monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    _noise(1).save(tmp_path / "good.png")
    _undecodable_jpeg(tmp_path / "broken.jpg")
    (tmp_path / "boxes.csv").write_text("good.png,4,4,30,30,dot\nbroken.jpg,1,1,9,9,dot\n")
    monkeypatch.chdir(tmp_path)
    name = new_name("flag")
    common = ["--config-file", QUICK_CONFIG, "--check-data", "--dataset",
              f"{name}=csv:{tmp_path / 'boxes.csv'}", "DATASETS.TRAIN", f"('{name}',)",
              "DATASETS.TEST", "()", "MODEL.RETINANET.NUM_CLASSES", "1"]
    assert train_net.cli(common) == 2
    error = capsys.readouterr().err
    assert "error: Dataset" in error and "broken.jpg" in error and "--skip-bad-images" in error
    assert train_net.cli(["--skip-bad-images", *common]) == 0
    out = capsys.readouterr().out
    assert "1 images" in out and "dropped images:       1" in out and "broken.jpg" in out
    assert "Training set" in out and "0 without boxes" in out


def test_mapper_skips_an_image_only_a_full_decode_finds(tmp_path: Path) -> None:
    _undecodable_jpeg(tmp_path / "broken.jpg")
    record = {"file_name": str(tmp_path / "broken.jpg"), "height": HEIGHT, "width": WIDTH,
              "image_id": 0, "annotations": []}
    skipping = _cfg(tmp_path, None, None, "DATALOADER.SKIP_BAD_IMAGES", "True")
    assert ImageDatasetMapper(skipping, is_train=True)(record) is None  # D2 draws another
    with pytest.raises(DatasetError, match=r"broken\.jpg.*--skip-bad-images"):
        ImageDatasetMapper(skipping, is_train=False)(record)  # never in evaluation
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        ImageDatasetMapper(_cfg(tmp_path), is_train=True)(record)


# --- EXIF orientation -------------------------------------------------------------------


def test_exif_rotated_image_reads_upright_and_raw_size_annotation_is_named(
        tmp_path: Path, new_name, caplog) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when read
    _noise(3, size=(HEIGHT, WIDTH)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    upright = read_image(str(tmp_path / "rotated.jpg"), format="RGB")  # Detectron2's reading
    assert upright.shape == (HEIGHT, WIDTH, 3)  # stored 48 wide, 64 high: upright 64 x 48
    np.testing.assert_array_equal(Predictor.load(str(tmp_path / "rotated.jpg"))[0], upright)
    mapper = ImageDatasetMapper(_cfg(tmp_path), is_train=False)
    mapped = mapper({"file_name": str(tmp_path / "rotated.jpg"), "height": HEIGHT,
                     "width": WIDTH, "image_id": 0})
    np.testing.assert_array_equal(mapped["image"].numpy().transpose(1, 2, 0), upright[:, :, ::-1])

    _noise(4).save(tmp_path / "plain.jpg")
    name = _coco_dataset(tmp_path, new_name("exif"), {
        "rotated.jpg": (HEIGHT, WIDTH),  # the stored size: boxes drawn on the raw pixels
        "plain.jpg": (WIDTH, HEIGHT)})
    with caplog.at_level(logging.WARNING):
        summary = validate_dataset(name)
    assert summary.exif_size_mismatches == 1 and summary.size_mismatches == 0
    named = [w for w in _warnings(caplog) if "EXIF orientation 6" in w]
    assert len(named) == 1 and "rotated.jpg" in named[0] and "un-rotated" in named[0]
    assert not any("plain.jpg" in w for w in _warnings(caplog))


# --- decompression bombs --------------------------------------------------------------------


@pytest.mark.parametrize("side", [100_000, 10_000], ids=["past Pillow's error", "past its warning"])
def test_decompression_bomb_refused_before_decoding(side: int, tmp_path: Path, monkeypatch,
                                                   pillow_untouched) -> None:
    bomb = _png_declaring(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 200

    def no_decoding(self):
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # between Pillow's warning and error thresholds, Pillow warns as it opens the header
    pillow_warns = pytest.warns(Image.DecompressionBombWarning) if side == 10_000 else \
        contextlib.nullcontext()
    with pillow_warns:
        with pytest.raises(ImageTooLargeError,
                           match=rf"bomb\.png.*{side}x{side}.*INPUT\.MAX_IMAGE_PIXELS"):
            Predictor.load(str(bomb))
        mapper = ImageDatasetMapper(_cfg(tmp_path), is_train=False)
        with pytest.raises(DatasetError, match=r"bomb\.png.*more than the limit"):
            mapper({"file_name": str(bomb), "height": side, "width": side, "image_id": 0})


def test_pixel_limit_is_a_config_key(tmp_path: Path) -> None:
    _noise().save(tmp_path / "small.png")
    with pytest.raises(ImageTooLargeError, match=r"small\.png.*64x48"):
        read_image_file(tmp_path / "small.png", max_pixels=1000)
    cfg = _cfg(tmp_path, None, None, "INPUT.MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DatasetError, match=r"small\.png"):
        ImageDatasetMapper(cfg, is_train=False)(
            {"file_name": str(tmp_path / "small.png"), "height": HEIGHT, "width": WIDTH})
    unlimited = _cfg(tmp_path, None, None, "INPUT.MAX_IMAGE_PIXELS", "0")
    assert ImageDatasetMapper(unlimited, is_train=False).max_image_pixels is None
    with pytest.raises(ConfigError, match="INPUT.MAX_IMAGE_PIXELS"):
        _cfg(tmp_path, None, None, "INPUT.MAX_IMAGE_PIXELS", "-1")


# --- checks at start: leakage, background ----------------------------------------------------


def test_leakage_is_reported_hashing_only_same_size_files(tmp_path: Path, new_name, caplog,
                                                          monkeypatch) -> None:
    for index, file_name in enumerate(["a.png", "b.png"]):
        _noise(10 + index).save(tmp_path / file_name)
    shutil.copy(tmp_path / "a.png", tmp_path / "c.png")  # the same image under another name
    _noise(12, size=(40, 40)).save(tmp_path / "d.png")
    train = _csv_dataset(tmp_path, new_name("train"), {"a.png": [(4, 4, 30, 30)],
                                                       "b.png": [(4, 4, 30, 30)]})
    test = _csv_dataset(tmp_path, new_name("test"), {"c.png": [(4, 4, 30, 30)],
                                                     "d.png": [(4, 4, 30, 30)]})
    hashed = []
    digest = split_checks._file_digest
    monkeypatch.setattr(split_checks, "_file_digest",
                        lambda path, *limit: hashed.append(path) or digest(path, *limit))
    pairs = split_checks.find_shared_images(
        [r["file_name"] for r in DatasetCatalog.get(train)],
        [r["file_name"] for r in DatasetCatalog.get(test)])
    assert pairs == [(str(tmp_path / "a.png"), str(tmp_path / "c.png"))]
    assert str(tmp_path / "d.png") not in hashed  # no training file of its size

    with caplog.at_level(logging.INFO):
        check_datasets_at_start(_cfg(tmp_path, train, test))
    [warning] = [w for w in _warnings(caplog) if "Leakage" in w]
    assert "1 of the 2 test images" in warning and "c.png" in warning and "a.png" in warning
    caplog.clear()
    with caplog.at_level(logging.INFO):  # evaluation only: no training set to leak from
        check_datasets_at_start(_cfg(tmp_path, train, test), training=False)
    assert not [w for w in _warnings(caplog) if "Leakage" in w]


def test_background_counted_per_split_and_share_kept(tmp_path: Path, new_name) -> None:
    images = {f"bg{i}.png": [] for i in range(4)}
    images.update({"one.png": [(4, 4, 30, 30)], "two.png": [(10, 10, 40, 40)]})
    for index, file_name in enumerate(images):
        _noise(20 + index).save(tmp_path / file_name)
    train = _csv_dataset(tmp_path, new_name("train"), images)
    test = _csv_dataset(tmp_path, new_name("test"), {"one.png": [(4, 4, 30, 30)], "bg0.png": []})
    report = split_checks.split_report(_cfg(tmp_path, train, test))
    assert f"Training set ({train}): 6 images, 4 without boxes (background): training keeps " \
           "none (DATALOADER.FILTER_EMPTY_ANNOTATIONS True" in report
    assert f"Test set ({test}): 2 images, 1 without boxes (background)" in report
    assert "2 of the 2 test images are also in the training set" in report

    assert split_checks.training_dataset_dicts(_cfg(tmp_path, train)) is None  # Detectron2's
    half = split_checks.training_dataset_dicts(
        _cfg(tmp_path, train, None, "DATALOADER.BACKGROUND_SHARE", "0.5"))
    assert len(half) == 4 and sum(map(split_checks.is_background, half)) == 2
    assert half == split_checks.training_dataset_dicts(  # the same draw on every process
        _cfg(tmp_path, train, None, "DATALOADER.BACKGROUND_SHARE", "0.5"))
    assert len(split_checks.training_dataset_dicts(
        _cfg(tmp_path, train, None, "DATALOADER.BACKGROUND_SHARE", "1.0"))) == 6
    kept = split_checks.split_report(_cfg(tmp_path, train, None, "DATALOADER.BACKGROUND_SHARE",
                                          "0.5"))
    assert "training keeps 2 (DATALOADER.BACKGROUND_SHARE 0.5)" in kept
    with pytest.raises(ConfigError, match="DATALOADER.BACKGROUND_SHARE"):
        _cfg(tmp_path, train, None, "DATALOADER.BACKGROUND_SHARE", "1.5")


def test_check_data_prints_the_split_report(tmp_path: Path, new_name, capsys) -> None:
    _noise(30).save(tmp_path / "a.png")
    _noise(31).save(tmp_path / "b.png")
    train = _csv_dataset(tmp_path, new_name("train"), {"a.png": [(4, 4, 30, 30)], "b.png": []})
    check_data([train], cfg=_cfg(tmp_path, train))
    out = capsys.readouterr().out
    assert "images without boxes: 1" in out and "1 without boxes (background)" in out


def test_train_net_trains_and_evaluates_past_damaged_images(tmp_path: Path, new_name,
                                                            monkeypatch) -> None:
    """train_net.py --skip-bad-images: one iteration and the evaluation, with a truncated
    image in both sets and an undecodable one dropped from the test set."""
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    for index in range(3):
        _noise(40 + index).save(tmp_path / f"good{index}.png")
    _truncated_jpeg(tmp_path / "cut.jpg")
    _undecodable_jpeg(tmp_path / "broken.jpg")
    (tmp_path / "train.csv").write_text("good0.png,4,4,30,30,dot\ngood1.png,8,8,40,40,dot\n"
                                        "cut.jpg,10,10,40,40,dot\n")
    test = _coco_dataset(tmp_path, new_name("test"), {
        "good2.png": (WIDTH, HEIGHT), "cut.jpg": (WIDTH, HEIGHT), "broken.jpg": (WIDTH, HEIGHT)})
    train, out = new_name("train"), tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert train_net.cli([
        "--config-file", QUICK_CONFIG, "--skip-bad-images",
        "--dataset", f"{train}=csv:{tmp_path / 'train.csv'}",
        *TINY_OPTS, "MODEL.RETINANET.NUM_CLASSES", "1", "SOLVER.MAX_ITER", "1",
        "MODEL.RETINANET_EXT.NUM_THREADS", "1", "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{test}',)", "OUTPUT_DIR", str(out)]) == 0
    assert (out / "model_final.pth").is_file()
    [line] = (out / "dropped_images.txt").read_text().splitlines()
    assert line.startswith(f"{test}\t{tmp_path / 'broken.jpg'}\t")
    detections = json.loads((out / "inference" / test / "coco_instances_results.json").read_text())
    assert {d["image_id"] for d in detections} <= {1, 2}  # good2.png, cut.jpg; not broken.jpg
    log = (out / "log.txt").read_text()
    assert "truncated" in log and "without boxes (background)" in log
