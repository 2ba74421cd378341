# -*- coding: utf-8 -*-
"""
Bad inputs and faults, each stopped with one line naming it, or handled the same way in training
and evaluation: config values and files (before training starts, also from the command line with
several processes), invalid annotations (dropped with a count by training and evaluation alike),
images of every mode (one reader for training, evaluation and demo.py) and a full disk while a
checkpoint is saved.
"""

import contextlib
import copy
import errno
import json
import logging
import os
import re
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("detectron2")

from pycocotools.coco import COCO  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json, register_coco_instances  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

from panet_d2 import PANetCheckpointer  # noqa: E402
from panet_d2.data import PanopticDatasetMapper  # noqa: E402
from panet_d2.data.image_io import ImageDatasetMapper, read_image  # noqa: E402
from panet_d2.engine import PANetTrainer  # noqa: E402
from panet_d2.engine.checks import (  # noqa: E402
    check_config,
    drop_invalid_annotations,
    drop_invalid_coco_annotations,
)
from panet_d2.errors import CheckpointError, ConfigError, DatasetError, ImageLoadError  # noqa: E402

from .common import ROOT, load_script, panet_cfg, run_script, synthetic_datasets  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PANOPTIC = os.path.join(ROOT, "configs", "quick_schedules", "panoptic_panet_R_18_synth.yaml")
PREFIX = "t_robust"  # the generated dataset (4 validation images), registered under this prefix


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with synthetic_datasets(
        tmp_path_factory, PREFIX, {"val": {"num_images": 4, "seed": 3}}
    ) as root:
        DatasetCatalog.get(PREFIX + "_val")  # generated now, into root
        yield root


def _main(train_net, out_dir, *opts, config=SMOKE, eval_only=False):
    argv = ["--config-file", str(config)] + ["--eval-only"] * eval_only
    argv += ["OUTPUT_DIR", str(out_dir), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    return train_net.main(default_argument_parser().parse_args(argv + [str(o) for o in opts]))


@contextlib.contextmanager
def _records(name="panet_d2"):
    """The messages logged under ``name`` in the block (its handlers may not propagate)."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _register(name, json_file, image_root):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


# -------------------------------------------------------------------------------------------------
# Config values and files: one line naming the key or file, before training starts
# -------------------------------------------------------------------------------------------------
BAD_VALUES = [
    (["MODEL.ROI_HEADS.NUM_CLASSES", 0], "MODEL.ROI_HEADS.NUM_CLASSES=0: must be a positive int"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", -3], "MODEL.ROI_HEADS.NUM_CLASSES=-3: must be a positive"),
    (["SOLVER.BASE_LR", -0.01], "SOLVER.BASE_LR=-0.01: must be 0 or positive."),
    (["SOLVER.STEPS", "(6,)"], r"SOLVER.STEPS=\(6,\): .* less than SOLVER.MAX_ITER=6."),
    (
        ["MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p4']"],
        r"MODEL.ROI_HEADS.IN_FEATURES=\['p2', 'p4'\]: RoI pooling \(and adaptive feature pooling\)"
        r" takes consecutive pyramid levels, finest first; these have strides \[4, 16\]. Allowed: "
        r"consecutive features of p2, p3, p4, p5, p6",
    ),
    (
        ["MODEL.RPN.IN_FEATURES", "['p2', 'p7']"],
        r"MODEL.RPN.IN_FEATURES=\['p2', 'p7'\]: 'p7' is not a feature of the backbone "
        r"build_resnet_pafpn_backbone; its features are: p2, p3, p4, p5, p6.",
    ),
]


@pytest.mark.parametrize("opts, message", BAD_VALUES)
def test_bad_config_values(train_net, datasets, tmp_path, opts, message):
    data = ["DATASETS.TRAIN", "('{}_val',)".format(PREFIX), "DATASETS.TEST", "()"]
    with pytest.raises(ConfigError, match=message):
        _main(train_net, tmp_path, *data, *opts)
    assert "Starting training" not in (tmp_path / "log.txt").read_text()
    if not opts[0].startswith("SOLVER."):  # the model's keys: also with --eval-only
        with pytest.raises(ConfigError, match=message):
            _main(train_net, tmp_path, *opts, eval_only=True, config=SMOKE)


def test_bad_panoptic_config_values():
    """The semantic head checks its own arguments when built (any entry point, not only
    train_net.py's pre-flight checks)."""
    cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 0
    with pytest.raises(ConfigError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES=0: must count the "):
        build_model(cfg)
    cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "res4"]
    with pytest.raises(ConfigError, match="SEM_SEG_HEAD.IN_FEATURES=.*'res4' is not a feature"):
        build_model(cfg)
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")  # IMS_PER_BATCH 4
    check_config(cfg, world_size=2)
    with pytest.raises(
        ConfigError,
        match=r"SOLVER.IMS_PER_BATCH=4: .* multiple of the number of " r"processes \(3\)",
    ):
        check_config(cfg, world_size=3)
    state = torch.get_rng_state()
    check_config(cfg)  # the backbone is built on the meta device: nothing drawn
    assert torch.equal(state, torch.get_rng_state())


def test_bad_config_files(train_net, tmp_path):
    def error(config):
        with pytest.raises(ConfigError) as e:
            _main(train_net, tmp_path / "out", config=config)
        return str(e.value)

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert error(empty) == "Config file {!r} is empty: give it _BASE_ or config keys.".format(
        str(empty)
    )
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text('_BASE_: "../Base-Missing.yaml"\nSOLVER:\n  MAX_ITER: 1\n')
    assert error(child) == (
        "The _BASE_ {!r} of config file {!r} does not exist (a _BASE_ is relative to the file "
        "that names it).".format(str(tmp_path / "sub" / "../Base-Missing.yaml"), str(child))
    )
    # a base that exists but is empty: named as the base of which file
    (tmp_path / "Base-Missing.yaml").write_text("")
    base = str(tmp_path / "sub" / "../Base-Missing.yaml")
    expected = "The _BASE_ {!r} of config file {!r} is empty: give it _BASE_ or config keys."
    assert error(child) == expected.format(base, str(child))
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    assert error(broken).startswith("Config file {!r} is not valid YAML: ".format(str(broken)))
    listing = tmp_path / "list.yaml"
    listing.write_text("- MODEL\n")
    assert "holds a YAML list instead of config keys" in error(listing)
    tagged = tmp_path / "tagged.yaml"  # nothing in a config file runs
    tagged.write_text("MODEL:\n  DEVICE: !!python/object/apply:os.getcwd []\n")
    assert error(tagged).startswith("Config file {!r} holds a Python tag".format(str(tagged)))
    bomb = tmp_path / "bomb.yaml"  # nested aliases: 10^9 values in 11 lines, refused at once
    levels = ["L0: &L0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    for i in range(1, 9):
        levels.append("L{}: &L{} [{}]".format(i, i, ", ".join(["*L{}".format(i - 1)] * 10)))
    bomb.write_text("\n".join(levels) + "\nMODEL:\n  PIXEL_MEAN: *L8\n")
    assert error(bomb) == (
        "Config file {!r} uses a YAML alias (*L0, line 2): config files are plain data, write "
        "the value out.".format(str(bomb))
    )
    loop = tmp_path / "loop.yaml"
    loop.write_text('_BASE_: "loop.yaml"\n')
    assert "inherits from itself" in error(loop)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text('_BASE_: "{}"\nMODEL:\n  NO_SUCH_KEY: 1\n'.format(SMOKE))
    assert error(unknown) == "Config file {!r}: Non-existent config key: MODEL.NO_SUCH_KEY".format(
        str(unknown)
    )
    with pytest.raises(ConfigError, match=r"command-line options .*SOLVER.NO_KEY.*Non-existent"):
        _main(train_net, tmp_path / "out", "SOLVER.NO_KEY", 1)


def test_bad_output_dir(train_net, datasets, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as e:
        _main(train_net, a_file)
    assert str(e.value) == "OUTPUT_DIR={!r} is a file: give a folder (created if missing).".format(
        str(a_file)
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "OUTPUT_DIR={!r} cannot be created: Not a directory".format(str(a_file / "out"))
        ),
    ):
        _main(train_net, a_file / "out")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(str(read_only), os.W_OK):  # root writes anyway: the file system refuses instead

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr("panet_d2.engine.checks.tempfile.mkstemp", refuse)
    with pytest.raises(ConfigError) as e:
        _main(train_net, read_only)
    expected = "OUTPUT_DIR={!r} is not writable: Permission denied. Give a writable folder."
    assert str(e.value) == expected.format(str(read_only))
    read_only.chmod(0o755)
    assert os.listdir(read_only) == []


def test_command_line_error_with_two_processes(tmp_path):
    """Checked before the processes start: one line, no traceback."""
    argv = ["--num-gpus", "2", "--config-file", SMOKE, "OUTPUT_DIR", str(tmp_path / "o")]
    proc = run_script("train_net.py", *argv, "SOLVER.BASE_LR", "-0.5", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        proc.stderr.strip().splitlines()[-1] == "ERROR: SOLVER.BASE_LR=-0.5: must be 0 or positive."
    )
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "o" / "log.txt")  # no process started


# -------------------------------------------------------------------------------------------------
# Annotations: the same ones dropped, with a count, in training and evaluation
# -------------------------------------------------------------------------------------------------
def _box_polygon(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture(scope="module")
def bad_annotations(datasets, tmp_path_factory):
    """A COCO copy of the generated validation split with invalid annotations; returns
    (dataset name, json file, {annotation id: what is wrong})."""
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    annos = data["annotations"]
    assert len(annos) >= 8
    bad = {}
    for a, (what, change) in zip(
        annos,
        [
            ("4 coordinates", lambda a: dict(segmentation=[_box_polygon(a["bbox"])[:4]])),
            ("odd only", lambda a: dict(segmentation=[_box_polygon(a["bbox"])[:7]])),
            ("empty", lambda a: dict(segmentation=[])),
            ("zero width", lambda a: dict(bbox=[a["bbox"][0], a["bbox"][1], 0, a["bbox"][3]])),
            ("one odd polygon", lambda a: dict(segmentation=[_box_polygon(a["bbox"]), [1, 2, 3]])),
        ],
    ):
        a.update(change(a))
        bad[a["id"]] = what
    json_file = tmp_path_factory.mktemp("bad_annotations") / "instances.json"
    json_file.write_text(json.dumps(data))
    return _register("t_bad_annotations", json_file, meta.image_root), str(json_file), bad, annos


def _kept_ids(name, json_file, masks):
    """The annotation ids that training keeps and those that evaluation keeps."""
    meta = MetadataCatalog.get(name)
    dicts = load_coco_json(json_file, meta.image_root, name, extra_annotation_keys=["id"])
    dicts = drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks)
    train = sorted(a["id"] for d in dicts for a in d["annotations"])
    coco = COCO(json_file)
    drop_invalid_coco_annotations(coco, name, masks)
    return train, sorted(coco.anns), coco


def test_invalid_annotations_dropped_alike(bad_annotations):
    name, json_file, bad, annos = bad_annotations
    ids = {a["id"]: what for a in annos for what in [bad.get(a["id"])]}
    with _records("panet_d2.engine.checks") as logged:
        train, evaluation, coco = _kept_ids(name, json_file, masks=True)
    dropped = {"4 coordinates", "odd only", "empty", "zero width"}
    assert train == evaluation == sorted(i for i, what in ids.items() if what not in dropped)
    # the valid polygon of the annotation with an odd one is kept
    kept = [i for i, what in ids.items() if what == "one odd polygon"][0]
    assert len(coco.anns[kept]["segmentation"]) == 1
    coco.annToRLE(coco.anns[kept])  # pycocotools reads every annotation left
    for i in coco.anns:
        coco.annToRLE(coco.anns[i])
    # load_coco_json dropped the 2 without a valid polygon itself (with its own warning)
    assert logged == [
        "Dataset 't_bad_annotations' (DATASETS.TRAIN) from {!r}: dropped 2 of {} annotations (1 "
        "with an empty or no segmentation (MODEL.MASK_ON), 1 with a box of non-positive size); "
        "the first: image {!r} ({!r}). Evaluation drops the same ones.".format(
            json_file,
            len(annos) - 2,
            annos[2]["image_id"],
            [
                d["file_name"]
                for d in DatasetCatalog.get(name)
                if d["image_id"] == annos[2]["image_id"]
            ][0],
        ),
        "Dataset 't_bad_annotations' (evaluation ground truth from {!r}): dropped 4 of {} "
        "annotations (2 without a valid polygon, 1 with an empty or no segmentation "
        "(MODEL.MASK_ON), 1 with a box of non-positive size) and 1 polygon(s) with fewer than 6 "
        "coordinates or of odd length; the first: annotation {} of image {}. Training drops the "
        "same ones.".format(json_file, len(annos), annos[0]["id"], annos[0]["image_id"]),
    ]
    # a box model keeps an empty segmentation in both
    train, evaluation, _ = _kept_ids(name, json_file, masks=False)
    assert train == evaluation and len(train) == len(annos) - 3


def test_training_and_evaluation_on_invalid_annotations(train_net, bad_annotations, tmp_path):
    name = bad_annotations[0]
    data = ["DATASETS.TRAIN", "('{}',)".format(name), "DATASETS.TEST", "('{}',)".format(name)]
    results = _main(train_net, tmp_path, *data, "SOLVER.MAX_ITER", 1, "SOLVER.STEPS", "()")
    assert set(results) == {"bbox", "segm"}  # pycocotools evaluated the cleaned ground truth
    log = (tmp_path / "log.txt").read_text()
    assert "(DATASETS.TRAIN) from" in log and "Evaluation drops the same ones." in log
    assert "(evaluation ground truth from" in log and "Training drops the same ones." in log


def test_all_annotations_invalid(datasets, tmp_path):
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    for a in data["annotations"]:
        a.pop("segmentation")
    json_file = tmp_path / "boxes_only.json"
    json_file.write_text(json.dumps(data))
    name = _register("t_boxes_only", json_file, meta.image_root)
    dicts = DatasetCatalog.get(name)
    with pytest.raises(DatasetError) as e:
        drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks=True)
    assert str(e.value) == (
        "Dataset 't_boxes_only' (DATASETS.TRAIN) from {!r}: all {} annotations are invalid: {} "
        "with an empty or no segmentation (MODEL.MASK_ON). A model with MODEL.MASK_ON needs a "
        "segmentation in every annotation.".format(str(json_file), *[len(data["annotations"])] * 2)
    )
    assert drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks=False) == dicts


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
    return _register("t_image_modes", json_file, folder), folder, expected


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
# A full disk while a checkpoint is saved
# -------------------------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile:
    """A file whose buffered bytes do not fit on the disk: ``close`` fails with ENOSPC."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._f.close()
        _no_space()


@pytest.mark.parametrize("where", ["write", "close", "tag"])
def test_full_disk_while_saving(tmp_path, monkeypatch, where):
    model = torch.nn.Linear(3, 2)
    checkpointer = PANetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = {n: (tmp_path / n).read_bytes() for n in ("model_final.pth", "last_checkpoint")}
    torch.nn.init.constant_(model.weight, 1.0)
    if where == "write":  # fails after some bytes were written

        def save(obj, f):
            f.write(b"partial bytes")
            _no_space()

        monkeypatch.setattr(torch, "save", save)
    else:
        open_ = PathManager.open
        target = "model_final.pth" if where == "close" else "last_checkpoint"

        def open_full(path, mode="r", **kwargs):
            f = open_(path, mode, **kwargs)
            return _FullDiskFile(f) if "w" in mode and target in path else f

        monkeypatch.setattr(PathManager, "open", open_full)
    with pytest.raises(CheckpointError) as e:
        checkpointer.save("model_final")
    expected = "Cannot save checkpoint {!r}: No space left on device (the previous checkpoint is "
    expected += "intact: last_checkpoint names 'model_final.pth')."
    assert str(e.value) == expected.format(str(tmp_path / "model_final.pth"))
    monkeypatch.undo()
    after = {n: (tmp_path / n).read_bytes() for n in before}
    if where == "tag":  # the checkpoint was saved; its tag still names the same file
        assert after["last_checkpoint"] == before["last_checkpoint"]
    else:
        assert after == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no partial
    PANetCheckpointer(torch.nn.Linear(3, 2), str(tmp_path)).load(str(tmp_path / "model_final.pth"))


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
    # its record with the stored size (read upright: 64 x 96)
    record = _size_record(tmp_path, "rotated.jpg", (96, 64), 6, (96, 64))
    with pytest.raises(DatasetError) as e:
        mapper(record)
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
        panoptic(record)
    assert str(e.value) == expected
