# -*- coding: utf-8 -*-
"""Detectron2's DatasetMapper, its train loader and Visualizer, and the project's
PanopticDatasetMapper on one record of every dataset kind the project registers: the outputs
agree with the files (PNG pixels, instance json), or the mapper refuses, naming the dataset."""

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.utils.visualizer import Visualizer

from panet_d2.data import PanopticDatasetMapper, register_coco_panoptic_panet
from panet_d2.data.coco_panoptic import coco_panoptic_separated_metadata
from panet_d2.data.image_io import ImageDatasetMapper, read_image
from panet_d2.data.synthetic import register_synthetic_dataset
from panet_d2.errors import DatasetError, ImageLoadError

from ..common import panet_cfg, panoptic_ids

SYNTH = "test_data_mappers_synth"
COCO = "test_data_mappers_coco"  # the COCO panoptic sample, without an instances json
COCO_INST = "test_data_mappers_coco_inst"  # the same, with an instances json


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, shared_data):
    root = str(tmp_path_factory.mktemp("synth"))
    register_synthetic_dataset(SYNTH, root=root, splits={"val": {"num_images": 2, "seed": 5}})
    sample = os.path.join(shared_data, "coco_panoptic_sample")
    with open(os.path.join(sample, "panoptic_coco_categories.json")) as f:
        categories = json.load(f)
    pan_json = os.path.join(sample, "panoptic_val2017_sample.json")
    with open(pan_json) as f:
        raw = json.load(f)
    inst_json = str(tmp_path_factory.mktemp("coco") / "instances.json")
    with open(inst_json, "w") as f:
        json.dump(_instances_json(raw, categories, os.path.join(sample, "panoptic")), f)
    files = [os.path.join(sample, "images"), os.path.join(sample, "panoptic"), pan_json]
    meta = coco_panoptic_separated_metadata(categories)
    register_coco_panoptic_panet(COCO, meta, *files, replace=True)
    register_coco_panoptic_panet(COCO_INST, meta, *files, inst_json, replace=True)
    return {"categories": categories, "raw": {a["image_id"]: a for a in raw["annotations"]}}


def _instances_json(panoptic, categories, panoptic_root):
    """A COCO instances json made from the panoptic annotations: one RLE mask per thing segment."""
    things = {c["id"] for c in categories if c["isthing"]}
    images, anns = [], []
    for a in panoptic["annotations"]:
        ids = panoptic_ids(os.path.join(panoptic_root, a["file_name"]))
        name = a["file_name"].replace(".png", ".jpg")
        images.append(
            {"id": a["image_id"], "file_name": name, "height": ids.shape[0], "width": ids.shape[1]}
        )
        for s in a["segments_info"]:
            if s["category_id"] in things:
                rle = mask_util.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=a["image_id"],
                        segmentation=rle,
                        **{k: s[k] for k in ("category_id", "bbox", "area", "iscrowd")},
                    )
                )
    cats = [{"id": c["id"], "name": c["name"]} for c in categories if c["isthing"]]
    return {"images": images, "annotations": anns, "categories": cats}


def _cfg(name, d):
    """Detectron2's defaults, masks on, and no geometric change: outputs compare with the files."""
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.RANDOM_FLIP = "none"
    h, w = np.asarray(Image.open(d["file_name"])).shape[:2]
    cfg.INPUT.MIN_SIZE_TRAIN = cfg.INPUT.MIN_SIZE_TEST = min(h, w)
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = max(h, w)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 1
    return cfg


def _check_instances(inst, annotations):
    """``instances`` against the non-crowd annotations: RLE masks decoded, contiguous classes."""
    annos = [a for a in annotations if not a.get("iscrowd", 0)]
    assert len(inst) == len(annos) > 0
    expected = sorted(
        (mask_util.decode(a["segmentation"]).tobytes(), a["category_id"]) for a in annos
    )
    got = sorted(
        (m.numpy().astype(np.uint8).tobytes(), int(c))
        for m, c in zip(inst.gt_masks.tensor, inst.gt_classes)
    )
    assert got == expected


def _check_panoptic_targets(out, d, num_stuff):
    """PanopticDatasetMapper's targets against the panoptic PNG and segments_info."""
    ids = panoptic_ids(d["pan_seg_file_name"])
    sem = np.full(ids.shape, 255)
    things = []
    for s in d["segments_info"]:
        sem[ids == s["id"]] = 0 if s["isthing"] else s["category_id"]
        if s["isthing"] and not s.get("iscrowd", 0):
            things.append(((ids == s["id"]).tobytes(), s["category_id"]))
    assert np.array_equal(out["sem_seg"].numpy(), sem)
    assert set(out["sem_seg"].unique().tolist()) <= set(range(num_stuff + 1)) | {255}
    inst = out["instances"]
    got = sorted(
        (m.numpy().tobytes(), int(c)) for m, c in zip(inst.gt_masks.tensor, inst.gt_classes)
    )
    assert got == sorted(things) and len(things) > 0


def _run_detectron2(name, d, cfg):
    """Detectron2's DatasetMapper (test mode), its train loader and Visualizer (what
    tools/visualize_data.py and tools/benchmark.py run) on dataset ``name``."""
    out = DatasetMapper(cfg, is_train=False)(d)
    assert tuple(out["image"].shape[1:]) == np.asarray(Image.open(d["file_name"])).shape[:2]
    assert "instances" not in out
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 1 and batch[0]["image"].dtype == torch.uint8
    img = np.asarray(Image.open(d["file_name"]).convert("RGB"))
    Visualizer(img, MetadataCatalog.get(name)).draw_dataset_dict(d)


def test_synthetic_instances(datasets):
    name = f"{SYNTH}_val"
    d = DatasetCatalog.get(name)[0]
    cfg = _cfg(name, d)
    out = DatasetMapper(cfg, is_train=True)(d)
    _check_instances(out["instances"], d["annotations"])
    assert "sem_seg" not in out
    _run_detectron2(name, d, cfg)
    with pytest.raises(DatasetError, match=name):
        PanopticDatasetMapper(cfg, is_train=True)
    assert "instances" not in PanopticDatasetMapper(cfg, is_train=False)(d)


def test_synthetic_panoptic(datasets):
    name = f"{SYNTH}_val_panoptic"
    meta = MetadataCatalog.get(name)
    d = DatasetCatalog.get(name)[0]
    cfg = _cfg(name, d)
    sem_png = np.asarray(Image.open(d["sem_seg_file_name"]))
    out = DatasetMapper(cfg, is_train=True)(d)
    _check_instances(out["instances"], d["annotations"])
    assert np.array_equal(out["sem_seg"].numpy(), sem_png)
    assert set(np.unique(sem_png)) <= set(range(len(meta.stuff_classes))) | {255}
    _run_detectron2(name, d, cfg)

    out = PanopticDatasetMapper(cfg, is_train=True)(d)
    _check_panoptic_targets(out, d, len(meta.stuff_classes) - 1)
    assert np.array_equal(out["sem_seg"].numpy(), sem_png)  # the PNG's and the written labels agree
    _check_instances(out["instances"], d["annotations"])
    assert "instances" not in PanopticDatasetMapper(cfg, is_train=False)(d)


def test_synthetic_sem_seg(datasets):
    name = f"{SYNTH}_val_sem_seg"
    d = DatasetCatalog.get(name)[0]
    cfg = _cfg(name, d)
    out = DatasetMapper(cfg, is_train=True)(d)
    assert np.array_equal(out["sem_seg"].numpy(), np.asarray(Image.open(d["sem_seg_file_name"])))
    assert "instances" not in out
    _run_detectron2(name, d, cfg)
    with pytest.raises(DatasetError, match=name):
        PanopticDatasetMapper(cfg, is_train=True)


@pytest.mark.parametrize("name", [COCO, COCO_INST])
def test_coco_panoptic_panet(datasets, name):
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == len(datasets["raw"])
    d = dicts[0]
    assert "sem_seg_file_name" not in d  # no semantic PNG: never the RGB panoptic one
    assert ("annotations" in d) == (name == COCO_INST)
    cfg = _cfg(name, d)
    out = DatasetMapper(cfg, is_train=True)(d)
    assert "sem_seg" not in out
    if name == COCO_INST:
        _check_instances(out["instances"], d["annotations"])
        raw = datasets["raw"][d["image_id"]]["segments_info"]
        assert (
            len(d["annotations"])
            == sum(s["isthing"] for s in d["segments_info"])
            == sum(
                s["category_id"] in MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
                for s in raw
            )
        )
    else:
        assert "instances" not in out
    _run_detectron2(name, d, cfg)

    out = PanopticDatasetMapper(cfg, is_train=True)(d)
    _check_panoptic_targets(out, d, len(MetadataCatalog.get(name).stuff_classes) - 1)
    if name == COCO_INST:
        _check_instances(out["instances"], d["annotations"])
    out = PanopticDatasetMapper(cfg, is_train=False)(d)
    assert not {"instances", "sem_seg"} & set(out)


def _same_outputs(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif k == "instances":
            assert a[k].image_size == b[k].image_size
            for field, value in a[k].get_fields().items():
                other = b[k].get(field)
                assert torch.equal(getattr(value, "tensor", value), getattr(other, "tensor", other))
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("split", ["val", "val_panoptic", "val_sem_seg"])
@pytest.mark.parametrize("is_train", [True, False])
def test_image_mapper_as_detectron2(datasets, split, is_train):
    """ImageDatasetMapper (the project's reader) maps 8-bit records exactly as Detectron2's
    DatasetMapper, with its random flip and multi-scale resize (same random draws)."""
    from panet_d2.data.image_io import ImageDatasetMapper

    name = f"{SYNTH}_{split}"
    d = DatasetCatalog.get(name)[0]
    cfg = _cfg(name, d)
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 56, 72)
    outputs = []
    for mapper in (DatasetMapper, ImageDatasetMapper):
        np.random.seed(3)
        outputs.append(mapper(cfg, is_train=is_train)(dict(d)))
    _same_outputs(*outputs)
    assert ("instances" in outputs[0]) == (is_train and split != "val_sem_seg")


def test_panoptic_png_and_segments_info_that_disagree(datasets, caplog):
    """Training warns of the ids on one side only (evaluation warns alike: test_hostile_inputs)."""
    name = f"{SYNTH}_val_panoptic"
    d = DatasetCatalog.get(name)[0]
    segments = [dict(s) for s in d["segments_info"]]
    dropped = segments.pop()["id"]
    segments.append(dict(segments[0], id=999999))
    d = dict(d, segments_info=segments)
    with caplog.at_level(logging.WARNING, logger="panet_d2.data.panoptic_mapper"):
        PanopticDatasetMapper(_cfg(name, d), is_train=True)(d)
    where = f"image {d['image_id']!r} ({d['pan_seg_file_name']})"
    mapper = "panet_d2.data.panoptic_mapper"  # (generating the dataset logs too, when first)
    assert [r.getMessage() for r in caplog.records if r.name == mapper] == [
        f"{where}: segment id(s) [999999] of segments_info are not in the PNG",
        f"{where}: PNG segment id(s) [{dropped}] not in segments_info: void",
    ]


def test_images_that_resizing_would_make_empty(tmp_path):
    """An image over 100:1 is refused by the reader; one that the config's sizes resize to no
    pixel, by the mapper: one line naming it (Detectron2: PIL's ValueError traceback)."""
    for h, w in [(20, 2001), (2001, 20), (1, 101)]:
        path = str(tmp_path / f"{h}x{w}.png")
        Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)
        with pytest.raises(ImageLoadError, match=f"is {w}x{h} .width x height.: panet_d2 reads"):
            read_image(path)
    path = str(tmp_path / "long.png")
    Image.fromarray(np.zeros((20, 1900), dtype=np.uint8)).save(path)
    assert read_image(path).shape[:2] == (20, 1900)  # 95:1 is read
    cfg = get_cfg()
    cfg.INPUT.MAX_SIZE_TEST = 40
    with pytest.raises(ImageLoadError, match="cannot be augmented as the config says"):
        ImageDatasetMapper(cfg, is_train=False)({"file_name": path, "height": 20, "width": 1900})


def test_model_input_side_at_most_8192(tmp_path):
    """Not resized (INPUT.MIN_SIZE_TEST 0), an image longer than 8192 px is refused by the mapper
    (a 12000 x 12000 JPEG took 8 GB, then a traceback); 8192 px is taken."""
    cfg = panet_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    mapper = ImageDatasetMapper(cfg, is_train=False)
    for width in (8192, 8193):
        path = str(tmp_path / f"{width}.png")
        Image.new("RGB", (width, 100)).save(path)
        record = {"file_name": path, "image_id": 0}
        if width == 8192:
            assert mapper(record)["image"].shape == (3, 100, 8192)
            continue
        with pytest.raises(ImageLoadError) as e:
            mapper(record)
        assert str(e.value) == (
            f"The image {path!r} is 8193x100 (width x height) as the model would get it: panet_d2 "
            "runs images of at most 8192 px a side (larger ones exhaust a machine's memory): "
            "resize it with INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (0: not resized), in a LazyConfig "
            "with its mapper's augmentations."
        )
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)  # training names its own keys
    with pytest.raises(
        ImageLoadError, match=r"resize it with INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN"
    ):
        ImageDatasetMapper(cfg, is_train=True)(record)


@pytest.mark.parametrize("arch", ["SemanticSegmentor", "PanopticFPN", "GeneralizedRCNN"])
def test_semantic_labels_checked_in_training(tmp_path, arch):
    """A model that trains on semantic PNGs gets one line for a label that is neither a class
    (0..NUM_CLASSES-1) nor IGNORE_VALUE (PyTorch's cross-entropy: "Target 7 is out of bounds" on
    the CPU, a device-side assert on a GPU); a model that does not read them is not refused."""
    image, labels = str(tmp_path / "x.png"), str(tmp_path / "x_gt.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    record = {"file_name": image, "sem_seg_file_name": labels, "height": 4, "width": 4}
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 5, 200
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (4,), 4
    for values in ([0, 4, 200, 1], [0, 5, 255, 7]):
        Image.fromarray(np.array([values] * 4, np.uint8)).save(labels)
        for is_train in (True, False):
            mapper = ImageDatasetMapper(cfg, is_train=is_train)
            if values[1] == 4 or not is_train or arch == "GeneralizedRCNN":
                out = mapper(dict(record))
                assert sorted(out["sem_seg"].unique().tolist()) == sorted(values)
                continue
            with pytest.raises(DatasetError) as e:
                mapper(dict(record))
            assert str(e.value) == (
                f"Semantic label PNG {labels!r} holds the label 5 (and 2 other values out of "
                "range): training with MODEL.SEM_SEG_HEAD.NUM_CLASSES 5 allows 0..4 and the "
                "ignore value 200."
            )
