# -*- coding: utf-8 -*-
"""
One image reader (panet_d2/data/image_io.py) for training, evaluation and demo.py: images of
every mode, and records whose width / height differ from the file (EXIF rotation included).
"""

import copy
import json
import os
import types

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2")


from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from panet_d2.data import PanopticDatasetMapper  # noqa: E402
from panet_d2.data.image_io import ImageDatasetMapper, check_image_size, read_image  # noqa: E402
from panet_d2.engine import PANetTrainer  # noqa: E402
from panet_d2.errors import DatasetError, ImageLoadError  # noqa: E402

from ..common import generated_val_set, load_script, panet_cfg, register_coco  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PREFIX = "t_image_modes"  # the generated dataset, registered under this prefix


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with generated_val_set(tmp_path_factory, PREFIX) as root:
        yield root


def _box_polygon(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


# -------------------------------------------------------------------------------------------------
# Images of every mode: one reader in training, evaluation and demo.py
# -------------------------------------------------------------------------------------------------
def _mode_images(folder):
    """Images of several modes; returns {file name: expected RGB uint8 array}."""
    rng = np.random.RandomState(0)
    expected = {}
    gray16 = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)
    cv2.imwrite(os.path.join(folder, "gray16.png"), gray16)
    expected["gray16.png"] = np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, 2)
    Image.fromarray(gray16.astype(np.int32)).save(os.path.join(folder, "gray16_as_I.tif"))
    gray = rng.randint(0, 256, (64, 96)).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(os.path.join(folder, "gray8.png"))
    expected["gray8.png"] = np.repeat(gray[..., None], 3, 2)
    rgba = rng.randint(0, 256, (64, 96, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(os.path.join(folder, "rgba.png"))
    expected["rgba.png"] = rgba[..., :3]
    palette = Image.fromarray(rng.randint(0, 4, (64, 96)).astype(np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200] + [0] * 756)
    palette.save(os.path.join(folder, "palette.png"))
    expected["palette.png"] = np.asarray(palette.convert("RGB"))
    rgb = rng.randint(0, 256, (64, 96, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(folder, "rgb.png"))
    expected["rgb.png"] = rgb
    # stored 96 wide x 64 high, left half red; EXIF orientation 6: shown 64 x 96, red on top
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:, :48] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(os.path.join(folder, "exif6.jpg"), exif=exif, quality=95)
    expected["exif6.jpg"] = np.rot90(stored, k=-1)
    return expected


def _close(image_rgb, expected, name):
    assert image_rgb.shape == expected.shape, name
    diff = np.abs(image_rgb.astype(int) - expected)
    assert diff.mean() < 3 if name.endswith(".jpg") else diff.max() <= 1, name  # JPEG: lossy


@pytest.fixture(scope="module")
def mode_dataset(datasets, tmp_path_factory):
    """A COCO dataset of one image per mode, one box-shaped instance each."""
    folder = tmp_path_factory.mktemp("modes")
    expected = _mode_images(str(folder))
    images, annos = [], []
    for i, (file_name, rgb) in enumerate(sorted(expected.items()), 1):
        h, w = rgb.shape[:2]
        images.append(dict(id=i, file_name=file_name, height=h, width=w))
        bbox = [4.0, 4.0, w / 2, h / 2]
        annos.append(
            dict(
                id=i,
                image_id=i,
                category_id=1,
                bbox=bbox,
                area=w * h / 4,
                iscrowd=0,
                segmentation=[_box_polygon(bbox)],
            )
        )
    with open(MetadataCatalog.get(PREFIX + "_val").json_file) as f:
        categories = json.load(f)["categories"]
    json_file = folder / "instances.json"
    json_file.write_text(json.dumps(dict(images=images, annotations=annos, categories=categories)))
    return register_coco("t_image_modes", json_file, folder), folder, expected


def test_read_image_of_every_mode(mode_dataset):
    _, folder, expected = mode_dataset
    for name, rgb in expected.items():
        path = str(folder / name)
        _close(read_image(path, "BGR")[..., ::-1], rgb, name)
        _close(read_image(path, "RGB"), rgb, name)
        assert read_image(path, "L").shape == rgb.shape[:2] + (1,)
    gray16 = read_image(str(folder / "gray16.png"), "RGB")
    assert gray16.min() == 0 and gray16.max() == 255  # Detectron2's read_image: all white
    # 32-bit pixels: refused, naming the file
    with pytest.raises(
        ImageLoadError,
        match=r"Image '.*gray16_as_I\.tif' has PIL mode 'I' "
        r"\(32-bit pixels\); panet_d2 reads 8- and 16-bit images",
    ):
        read_image(str(folder / "gray16_as_I.tif"), "BGR")
    broken = folder / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match=r"Cannot read image '.*broken\.png': "):
        read_image(str(broken))


def test_every_16_bit_value_is_scaled_to_the_nearest_8_bit_one(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # each 16-bit value once
    path = str(tmp_path / "all16.png")
    cv2.imwrite(path, values)
    gray = read_image(path, "RGB")
    assert np.array_equal(gray[..., 0], np.round(values / 257.0).astype(np.uint8))  # no ties
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_training_and_evaluation_read_every_mode(mode_dataset):
    name, folder, expected = mode_dataset
    cfg = panet_cfg(
        "quick_schedules/panet_R_18_synth_instance.yaml",
        opts=[
            "DATASETS.TRAIN",
            (name,),
            "DATASETS.TEST",
            (name,),
            "INPUT.RANDOM_FLIP",
            "none",
            "INPUT.MIN_SIZE_TRAIN",
            (64,),
            "INPUT.MIN_SIZE_TEST",
            64,
            "SOLVER.IMS_PER_BATCH",
            1,
            "DATALOADER.ASPECT_RATIO_GROUPING",
            False,
        ],
    )
    by_id = {i: rgb for i, (_, rgb) in enumerate(sorted(expected.items()), 1)}
    loader = PANetTrainer.build_test_loader(cfg, name)
    assert isinstance(loader.dataset._map_func._obj, ImageDatasetMapper)
    seen = set()
    for (record,) in loader:
        rgb = by_id[record["image_id"]]
        image = record["image"].permute(1, 2, 0).numpy()[..., ::-1]  # BGR tensor: as read
        _close(image, rgb, record["file_name"])
        seen.add(record["image_id"])
    assert seen == set(by_id)
    loader = PANetTrainer.build_train_loader(types.SimpleNamespace(), cfg)
    for _, (record) in zip(range(2 * len(by_id)), loader):
        record = record[0]
        image = record["image"].permute(1, 2, 0).numpy()[..., ::-1]
        if image.shape[:2] == by_id[record["image_id"]].shape[:2]:  # short side 64: not resized
            _close(image, by_id[record["image_id"]], record["file_name"])
        assert len(record["instances"]) == 1


def test_panoptic_mapper_reads_every_mode(datasets, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PANET_D2_DATASETS", datasets)
        record = copy.deepcopy(DatasetCatalog.get(PREFIX + "_val_panoptic")[0])
    cfg = panet_cfg(
        "quick_schedules/panoptic_panet_R_18_synth.yaml",
        opts=[
            "DATASETS.TRAIN",
            (PREFIX + "_val_panoptic",),
            "INPUT.RANDOM_FLIP",
            "none",
            "INPUT.MIN_SIZE_TRAIN",
            (record["height"],),
            "INPUT.MIN_SIZE_TEST",
            record["height"],
        ],
    )
    rgb = read_image(record["file_name"], "RGB")
    gray16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    record["file_name"] = str(tmp_path / "gray16.png")
    cv2.imwrite(record["file_name"], gray16)
    expected = np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, 2)
    for is_train in (True, False):  # its panoptic path and DatasetMapper's
        out = PanopticDatasetMapper(cfg, is_train)(record)
        _close(out["image"].permute(1, 2, 0).numpy()[..., ::-1], expected, str(is_train))
    Image.fromarray(gray16.astype(np.int32)).save(str(tmp_path / "int32.tif"))
    record["file_name"] = str(tmp_path / "int32.tif")
    with pytest.raises(ImageLoadError, match=r"int32\.tif' has PIL mode 'I'"):
        PanopticDatasetMapper(cfg, True)(record)


def test_demo_reads_with_the_shared_reader():
    demo = load_script("demo.py", "panet_demo")
    assert demo.read_image is read_image


# -------------------------------------------------------------------------------------------------
# Image sizes: a record whose width / height differ from the file (EXIF rotation included)
# -------------------------------------------------------------------------------------------------
def _size_record(folder, name, stored_wh, orientation, record_wh):
    """An image stored ``stored_wh`` (w, h) with an EXIF orientation, its record ``record_wh``."""
    path = os.path.join(str(folder), name)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    w, h = stored_wh
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, exif=exif, quality=95)
    box = [4.0, 4.0, 20.0, 20.0]
    anno = dict(bbox=box, bbox_mode=0, category_id=0, iscrowd=0, segmentation=[_box_polygon(box)])
    return dict(
        file_name=path, image_id=7, width=record_wh[0], height=record_wh[1], annotations=[anno]
    )


def test_image_size_mismatch_is_one_line(tmp_path):
    cfg = panet_cfg(
        "quick_schedules/panet_R_18_synth_instance.yaml",
        opts=["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.RANDOM_FLIP", "none"],
    )
    mapper = ImageDatasetMapper(cfg, True)
    # a rotated photo whose record has the upright size: read as it is
    record = _size_record(tmp_path, "upright.jpg", (96, 64), 6, (64, 96))
    assert tuple(mapper(copy.deepcopy(record))["image"].shape[1:]) == (96, 64)  # (h, w) upright
    assert check_image_size(record) is None  # from the header (the checks before a run)
    # its record with the stored size (read upright: 64 x 96)
    record = _size_record(tmp_path, "rotated.jpg", (96, 64), 6, (96, 64))
    with pytest.raises(DatasetError) as e:
        mapper(copy.deepcopy(record))
    with pytest.raises(DatasetError) as from_header:
        check_image_size(record)
    assert str(from_header.value) == str(e.value)
    assert str(e.value) == (
        "Image {!r} (image_id 7) is 64x96 (width x height) as read, its dataset record says 96x64; "
        "the file is stored 96x64 with EXIF orientation 6 (a rotated photo, read upright as "
        "Detectron2 reads it): write its upright size 64x96 in the dataset's JSON. Fix the width / "
        "height of the record, or the image file.".format(record["file_name"])
    )
    # a plain mismatch, in the panoptic mapper's path as well
    record = _size_record(tmp_path, "plain.png", (80, 60), None, (81, 60))
    expected = (
        "Image {!r} (image_id 7) is 80x60 (width x height) as read, its dataset record says 81x60. "
        "Fix the width / height of the record, or the image file.".format(record["file_name"])
    )
    with pytest.raises(DatasetError) as e:
        mapper(copy.deepcopy(record))
    assert str(e.value) == expected
    panoptic = PanopticDatasetMapper(
        panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml"), False
    )
    with pytest.raises(DatasetError) as e:
        panoptic(copy.deepcopy(record))
    assert str(e.value) == expected
    with pytest.raises(DatasetError) as e:
        check_image_size(record)
    assert str(e.value) == expected
    assert check_image_size(dict(record, width=80)) is None
    del record["width"], record["height"]  # a record without a size: nothing to compare
    assert check_image_size(record) is None


def test_image_over_pils_pixel_limit_is_one_line(tmp_path, monkeypatch):
    """An image beyond PIL's pixel limit (a decompression bomb): one ImageLoadError from the
    header check before a run, as from the reader."""
    path = str(tmp_path / "big.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 pixels: over twice the limit
    for read in (
        lambda: check_image_size(dict(file_name=path, width=100, height=100)),
        lambda: read_image(path),
    ):
        with pytest.raises(ImageLoadError, match="exceeds limit of 2000 pixels"):
            read()


def test_the_first_frame_of_an_animation_is_read_and_said(tmp_path, caplog):
    """An animated GIF (or a multi-page TIFF): its first frame, and a warning that says so, once
    a file (a training epoch reads it again)."""
    frames = [Image.new("RGB", (8, 6), color) for color in ((255, 0, 0), (0, 0, 255))]
    for suffix in ("gif", "tif"):
        path = str(tmp_path / f"two_frames.{suffix}")
        frames[0].save(path, save_all=True, append_images=frames[1:])
        caplog.clear()
        for _ in range(2):
            image = read_image(path, "RGB")
            assert image.shape == (6, 8, 3) and (image == [255, 0, 0]).all()
        said = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
        assert said == [f"The image {path!r} has 2 frames: panet_d2 reads the first."]
    caplog.clear()
    frames[0].save(str(tmp_path / "one.gif"))
    read_image(str(tmp_path / "one.gif"), "RGB")
    # a phone photo's JPEG with an MPF block (PIL: "MPO", 2 frames): a photo, nothing said
    frames[0].save(str(tmp_path / "photo.jpg"), "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(str(tmp_path / "photo.jpg")).n_frames == 2
    assert (read_image(str(tmp_path / "photo.jpg"), "RGB")[..., 0] > 200).all()
    assert not [r for r in caplog.records if "frames" in r.getMessage()]
