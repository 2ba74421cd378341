# -*- coding: utf-8 -*-
"""Panoptic label space, PanopticDatasetMapper and COCO panoptic registration, on the real COCO
sample."""

import copy
import json
import logging
import os

import numpy as np
import pytest
import torch
from panopticapi.utils import id2rgb
from panopticapi.utils import rgb2id as api_rgb2id
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.structures import Instances

from panet_d2.data import (  # importing registers the lazy builtin names
    PanopticDatasetMapper,
    PanopticLabelSpace,
    coco_panoptic_separated_metadata,
    register_coco_panoptic_panet,
)
from panet_d2.errors import DatasetError, ImageLoadError
from panet_d2.modeling.postprocessing.panoptic_merge import combine_semantic_and_instance_outputs

from ..common import panoptic_ids

NAME = "panet_test_coco_panoptic_sample"


@pytest.fixture(scope="module")
def sample(shared_data):
    root = os.path.join(shared_data, "coco_panoptic_sample")
    with open(os.path.join(root, "panoptic_coco_categories.json")) as f:
        categories = json.load(f)
    pan_json = os.path.join(root, "panoptic_val2017_sample.json")
    register_coco_panoptic_panet(
        NAME,
        coco_panoptic_separated_metadata(categories),
        os.path.join(root, "images"),
        os.path.join(root, "panoptic"),
        pan_json,
        replace=True,
    )
    with open(pan_json) as f:
        raw = {a["image_id"]: a for a in json.load(f)["annotations"]}
    return {
        "root": root,
        "categories": categories,
        "raw": raw,
        "dicts": DatasetCatalog.get(NAME),
        "space": PanopticLabelSpace.from_metadata(MetadataCatalog.get(NAME)),
    }


def _expected(ids, raw_segments, categories):
    """Independent separated-convention ground truth from decoded PNG ids + raw json."""
    thing_ids = sorted(c["id"] for c in categories if c["isthing"])
    stuff_ids = sorted(c["id"] for c in categories if not c["isthing"])
    sem = np.full(ids.shape, 255, dtype=np.int64)
    things = {}
    for s in raw_segments:
        m = ids == s["id"]
        if s["category_id"] in thing_ids:
            sem[m] = 0
            if not s["iscrowd"] and m.any():
                things[s["id"]] = (m, thing_ids.index(s["category_id"]))
        else:
            sem[m] = 1 + stuff_ids.index(s["category_id"])
    return sem, things


def _check_output(out, ids, raw_segments, categories):
    sem, things = _expected(ids, raw_segments, categories)
    assert out["sem_seg"].dtype == torch.int64
    assert np.array_equal(out["sem_seg"].numpy(), sem)
    inst = out["instances"]
    assert len(inst) == len(things)
    masks = inst.gt_masks.tensor.numpy()
    seen = set()
    for k in range(len(inst)):
        seg_ids = np.unique(ids[masks[k]])
        assert len(seg_ids) == 1, "an instance mask covers several GT segments"
        m, cls = things[int(seg_ids[0])]
        assert np.array_equal(masks[k], m)
        assert int(inst.gt_classes[k]) == cls
        ys, xs = np.nonzero(m)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert inst.gt_boxes.tensor[k].tolist() == [float(v) for v in box]
        seen.add(int(seg_ids[0]))
    assert seen == set(things)


def test_metadata_equals_detectron2_separated(sample):
    meta = coco_panoptic_separated_metadata(sample["categories"])
    ref = _get_builtin_metadata("coco_panoptic_separated")
    for k, v in meta.items():
        assert ref[k] == v, k
    m = MetadataCatalog.get(NAME)
    assert m.evaluator_type == "coco_panoptic_seg" and m.ignore_label == 255
    assert m.stuff_classes[0] == "things" and len(m.stuff_classes) == 54


def test_label_space_conventions():
    sep = PanopticLabelSpace.from_metadata(MetadataCatalog.get("coco_2017_val_panoptic_separated"))
    std = PanopticLabelSpace.from_metadata(MetadataCatalog.get("coco_2017_val_panoptic"))
    assert sep.is_separated and not std.is_separated
    assert (sep.num_things, sep.num_stuff) == (std.num_things, std.num_stuff) == (80, 53)
    assert sep.thing_dataset_ids == std.thing_dataset_ids
    assert sep.stuff_dataset_ids == std.stuff_dataset_ids
    assert sep.thing_classes == std.thing_classes
    assert len(sep.stuff_classes) == 54 and sep.stuff_classes[0] == "things"
    std_meta = MetadataCatalog.get("coco_2017_val_panoptic")
    for cid in sep.thing_dataset_ids + sep.stuff_dataset_ids:
        isthing, internal = sep.dataset_id_to_internal(cid)
        assert (isthing, internal) == std.dataset_id_to_internal(cid)
        # separated: identity; standard: back to the dataset's contiguous ids
        table = "thing" if isthing else "stuff"
        sep_meta = MetadataCatalog.get("coco_2017_val_panoptic_separated")
        assert (
            sep.internal_to_contiguous(internal, isthing)
            == getattr(sep_meta, f"{table}_dataset_id_to_contiguous_id")[cid]
            == internal
        )
        contig = getattr(std_meta, f"{table}_dataset_id_to_contiguous_id")[cid]
        assert std.internal_to_contiguous(internal, isthing) == contig
        assert std.contiguous_to_internal(contig, isthing) == internal

    cs = PanopticLabelSpace.from_metadata(MetadataCatalog.get("cityscapes_fine_panoptic_val"))
    assert cs.thing_contiguous_ids == list(range(11, 19)) and cs.num_stuff == 11
    assert cs.thing_classes[0] == "person" and cs.stuff_classes[:2] == ["things", "road"]
    assert cs.contiguous_to_internal(11, True) == 0 and cs.contiguous_to_internal(0, False) == 1
    assert cs.internal_to_contiguous(11, False) == 10 and cs.internal_to_contiguous(7, True) == 18
    with pytest.raises(ValueError, match="stuff 12"):
        cs.internal_to_contiguous(12, False)
    with pytest.raises(ValueError, match="5.*cityscapes_fine_panoptic_val"):
        cs.contiguous_to_internal(5, True)
    with pytest.raises(ValueError, match="9999.*coco_2017_val_panoptic"):
        std.dataset_id_to_internal(9999)


def test_mapper_exact_without_augmentation(sample):
    mapper = PanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", label_space=sample["space"]
    )
    assert len(sample["dicts"]) == 2
    for d in sample["dicts"]:
        out = mapper(d)
        ids = panoptic_ids(d["pan_seg_file_name"])
        assert tuple(out["image"].shape[1:]) == ids.shape
        _check_output(out, ids, sample["raw"][d["image_id"]]["segments_info"], sample["categories"])
        assert "segments_info" not in out and "sem_seg_file_name" not in out


def test_mapper_flip_and_resize(sample):
    augs = [T.ResizeShortestEdge((300, 300), max_size=1000), T.RandomFlip(prob=1.0)]
    mapper = PanopticDatasetMapper(
        True, augmentations=augs, image_format="BGR", label_space=sample["space"]
    )
    for d in sample["dicts"]:
        out = mapper(d)
        rgb = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB"))
        h, w = rgb.shape[:2]
        nh, nw = out["image"].shape[1:]
        assert min(nh, nw) == 300
        rgb = T.ResizeTransform(h, w, nh, nw).apply_segmentation(rgb)
        rgb = T.HFlipTransform(nw).apply_segmentation(rgb)
        ids = api_rgb2id(rgb.astype(np.uint32))
        _check_output(out, ids, sample["raw"][d["image_id"]]["segments_info"], sample["categories"])


def test_mapper_from_config_and_inference(sample):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (NAME,)
    cfg.DATASETS.TEST = (NAME,)
    cfg.INPUT.MIN_SIZE_TEST = 200
    train = PanopticDatasetMapper(cfg, is_train=True)
    assert train.label_space == sample["space"]
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    d = sample["dicts"][0]
    out = mapper(d)
    assert min(out["image"].shape[1:]) == 200
    assert (out["height"], out["width"]) == (427, 640)
    assert out["file_name"] == d["file_name"] and out["image_id"] == d["image_id"]
    assert not {"instances", "sem_seg", "annotations"} & set(out)


@pytest.mark.parametrize("ignore", [254, -1])
def test_mapper_void_label_from_config(sample, ignore):
    """Void pixels get MODEL.SEM_SEG_HEAD.IGNORE_VALUE (what the loss ignores), the rest as ever."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (NAME,)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (427,), "none"
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = ignore
    d = sample["dicts"][0]
    out = PanopticDatasetMapper(cfg, is_train=True)(d)
    segments = sample["raw"][d["image_id"]]["segments_info"]
    sem, _ = _expected(panoptic_ids(d["pan_seg_file_name"]), segments, sample["categories"])
    assert (sem == 255).any()
    sem[sem == 255] = ignore
    assert np.array_equal(out["sem_seg"].numpy(), sem)


def test_mapper_many_segments_and_crop(tmp_path):
    """> 255 segments (3-channel index path) with resize + flip + crop."""
    h, w = 90, 120
    ids = np.zeros((h, w), dtype=np.uint32)
    segs = []
    k = 0
    for y in range(0, h, 5):
        for x in range(0, w, 5):
            k += 1
            ids[y : y + 4, x : x + 4] = 1000 + k
            segs.append({"id": 1000 + k, "category_id": 1 if k % 3 else 2, "iscrowd": 0})
    ids[:, 118:] = 7
    segs.append({"id": 7, "category_id": 184, "iscrowd": 0})
    assert len(segs) > 300
    Image.fromarray(id2rgb(ids)).save(tmp_path / "p.png")
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / "i.jpg")
    space = PanopticLabelSpace.from_metadata(coco_panoptic_separated_metadata())
    d = {
        "file_name": str(tmp_path / "i.jpg"),
        "image_id": 1,
        "pan_seg_file_name": str(tmp_path / "p.png"),
        "segments_info": segs,
    }
    augs = [
        T.ResizeTransform(h, w, 133, 171),
        T.HFlipTransform(171),
        T.CropTransform(20, 10, 100, 90),
    ]
    out = PanopticDatasetMapper(True, augmentations=augs, image_format="RGB", label_space=space)(d)
    rgb = id2rgb(ids)
    for t in augs:
        rgb = t.apply_segmentation(rgb)
    tids = api_rgb2id(rgb.astype(np.uint32))
    _check_output_generic(out, tids, segs, space)


def _check_output_generic(out, ids, segs, space):
    sem = np.full(ids.shape, 255, dtype=np.int64)
    things = {}
    for s in segs:
        isthing, internal = space.dataset_id_to_internal(s["category_id"])
        m = ids == s["id"]
        sem[m] = 0 if isthing else internal
        if isthing and m.any():
            things[s["id"]] = (m, internal)
    assert np.array_equal(out["sem_seg"].numpy(), sem)
    masks = out["instances"].gt_masks.tensor.numpy()
    assert len(masks) == len(things)
    for k in range(len(masks)):
        (sid,) = np.unique(ids[masks[k]])
        assert np.array_equal(masks[k], things[int(sid)][0])
        assert int(out["instances"].gt_classes[k]) == things[int(sid)][1]


def _gt_outputs(sample, d):
    """Model-style outputs from the ground truth: internal ids converted back through
    the label space to the dataset convention."""
    space = sample["space"]
    ids = panoptic_ids(d["pan_seg_file_name"])
    info = []
    for s in d["segments_info"]:
        isthing, internal = space.segment_to_internal(s)
        info.append({"id": s["id"], "isthing": isthing, "category_id": internal})
    info = space.segments_info_to_dataset(info)
    return {"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), info)}


def _pq(sample, outputs, tmp_path):
    ev = COCOPanopticEvaluator(NAME, output_dir=str(tmp_path))
    ev.reset()
    for d, o in zip(sample["dicts"], outputs):
        ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]}], [o])
    return ev.evaluate()["panoptic_seg"]


def test_pq_100_on_ground_truth(sample, tmp_path):
    res = _pq(sample, [_gt_outputs(sample, d) for d in sample["dicts"]], tmp_path)
    assert res["PQ"] == pytest.approx(100) and res["PQ_th"] == pytest.approx(100)
    assert res["PQ_st"] == pytest.approx(100)


def test_merge_of_gt_reproduces_panoptic_gt(sample, tmp_path):
    mapper = PanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", label_space=sample["space"]
    )
    outputs = []
    for d in sample["dicts"]:
        out = mapper(d)
        gt = out["instances"]
        inst = Instances(gt.image_size)
        inst.pred_masks = gt.gt_masks.tensor
        inst.scores = torch.ones(len(gt))
        inst.pred_classes = gt.gt_classes
        sem = out["sem_seg"].clone()
        sem[sem == 255] = 0  # a model never predicts void; 0 ("other") leaves pixels empty
        seg, info = combine_semantic_and_instance_outputs(inst, sem, 0.5, 0, 0.5)
        # same segmentation as the GT up to ids (crowd and void pixels -> 0)
        ids = panoptic_ids(d["pan_seg_file_name"])
        by_id = {s["id"]: s for s in d["segments_info"]}
        for s in info:
            (gid,) = np.unique(ids[(seg == s["id"]).numpy()])
            g = by_id[int(gid)]
            assert np.array_equal((seg == s["id"]).numpy(), ids == gid)
            assert (g["isthing"], g["category_id"]) == (
                s["isthing"],
                sample["space"].internal_to_contiguous(s["category_id"], s["isthing"]),
            )
        covered = {s["id"] for s in d["segments_info"] if not s.get("iscrowd", 0)}
        assert len(info) == len(covered)
        outputs.append({"panoptic_seg": (seg, sample["space"].segments_info_to_dataset(info))})
    res = _pq(sample, outputs, tmp_path)
    assert res["PQ"] == pytest.approx(100) and res["PQ_th"] == pytest.approx(100)
    assert res["PQ_st"] == pytest.approx(100)


def test_detectron2_separated_style_dicts(sample, tmp_path):
    """Dicts like Detectron2's builtin *_panoptic_separated ones (instance annotations +
    preprocessed semantic PNG) give the same training data as the panoptic path."""
    from pycocotools import mask as mask_util

    from detectron2.structures import BoxMode

    space = sample["space"]
    mapper = PanopticDatasetMapper(
        True, augmentations=[T.RandomFlip(prob=1.0)], image_format="BGR", label_space=space
    )
    d = sample["dicts"][0]
    ref = mapper(d)
    ids = panoptic_ids(d["pan_seg_file_name"])
    sem, _ = _expected(ids, sample["raw"][d["image_id"]]["segments_info"], sample["categories"])
    Image.fromarray(sem.astype(np.uint8)).save(tmp_path / "sem.png")
    annos = []
    for s in d["segments_info"]:
        if s["isthing"]:
            rle = mask_util.encode(np.asfortranarray(ids == s["id"]))
            rle["counts"] = rle["counts"].decode()
            annos.append(
                {
                    "bbox": s["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "segmentation": rle,
                    "category_id": s["category_id"],
                    "iscrowd": s["iscrowd"],
                }
            )
    sep = {
        "file_name": d["file_name"],
        "image_id": d["image_id"],
        "annotations": annos,
        "sem_seg_file_name": str(tmp_path / "sem.png"),
    }
    out = mapper(sep)
    assert torch.equal(out["sem_seg"], ref["sem_seg"])
    key = lambda inst: sorted(  # noqa: E731
        (tuple(b), int(c)) for b, c in zip(inst.gt_boxes.tensor.tolist(), inst.gt_classes)
    )
    assert key(out["instances"]) == key(ref["instances"])


def test_separated_style_dict_without_instances(sample):
    """No non-crowd annotation: empty targets with masks (DatasetMapper's recompute_boxes alone
    would look for masks that an empty Instances does not have)."""
    mapper = PanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", label_space=sample["space"]
    )
    d = sample["dicts"][0]
    crowd = {"bbox": [0, 0, 9, 9], "bbox_mode": 1, "category_id": 0, "iscrowd": 1}
    for annotations in ([], [crowd]):
        out = mapper({"file_name": d["file_name"], "image_id": 1, "annotations": annotations})
        h, w = out["image"].shape[1:]
        assert len(out["instances"]) == 0 and out["instances"].image_size == (h, w)
        assert out["instances"].gt_masks.tensor.shape == (0, h, w)


# ------------------------------------------------------------------ bad inputs
def test_missing_and_unreadable_png(sample, tmp_path):
    mapper = PanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", label_space=sample["space"]
    )
    d = copy.deepcopy(sample["dicts"][0])
    d["pan_seg_file_name"] = str(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="nope.png"):
        mapper(d)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    d["pan_seg_file_name"] = str(tmp_path / "bad.png")
    with pytest.raises(ImageLoadError, match="bad.png"):
        mapper(d)


def test_unknown_category_and_absent_segment(sample, caplog):
    mapper = PanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", label_space=sample["space"]
    )
    d = copy.deepcopy(sample["dicts"][0])
    d["segments_info"][0]["category_id"] = 4242
    with pytest.raises(ValueError, match=f"4242.*{NAME}"):
        mapper(d)
    raw = copy.deepcopy(sample["dicts"][0])
    for s in raw["segments_info"]:  # raw json style: dataset ids, no "isthing"
        s.pop("isthing")
    raw["segments_info"][0]["category_id"] = 999
    with pytest.raises(ValueError, match=f"999.*{NAME}"):
        mapper(raw)
    d = copy.deepcopy(sample["dicts"][0])
    d["segments_info"].append({"id": 123456, "category_id": 0, "iscrowd": 0, "isthing": True})
    with caplog.at_level(logging.WARNING):
        out = mapper(d)
    assert "123456" in caplog.text and str(d["image_id"]) in caplog.text
    assert len(out["instances"]) == 14


def _register_tmp(name, root, pan_json):
    register_coco_panoptic_panet(
        name,
        coco_panoptic_separated_metadata(),
        os.path.join(root, "images"),
        os.path.join(root, "panoptic"),
        pan_json,
        replace=True,
    )


def test_bad_json_and_missing_files(sample, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _register_tmp("panet_test_bad_json", sample["root"], str(bad))
    with pytest.raises(ValueError, match="bad.json"):
        DatasetCatalog.get("panet_test_bad_json")

    with open(os.path.join(sample["root"], "panoptic_val2017_sample.json")) as f:
        js = json.load(f)
    js["annotations"][0]["segments_info"][0]["category_id"] = 9999
    unk = tmp_path / "unknown.json"
    unk.write_text(json.dumps(js))
    _register_tmp("panet_test_unknown_cat", sample["root"], str(unk))
    with pytest.raises(ValueError, match="panet_test_unknown_cat.*9999"):
        DatasetCatalog.get("panet_test_unknown_cat")

    missing = tmp_path / "missing.json"
    _register_tmp("panet_test_missing", sample["root"], str(missing))  # no error yet
    with pytest.raises(DatasetError, match="panet_test_missing.*missing.json"):
        DatasetCatalog.get("panet_test_missing")


def test_builtin_names_registered_lazily():
    for split in ("train", "val"):
        name = f"coco_2017_{split}_panoptic_panet"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg" and len(meta.stuff_classes) == 54
        if not os.path.exists(meta.panoptic_json):
            expected = f"{name}.*panoptic_{split}2017.json.*DETECTRON2_DATASETS"
            with pytest.raises(DatasetError, match=expected):
                DatasetCatalog.get(name)


def test_registration_takes_metadata_with_ignore_label(tmp_path):
    """Metadata that already holds ignore_label / label_divisor (e.g. the generated dataset's)
    registers with its own values (Detectron2's register_coco_panoptic: a TypeError for a key
    given twice); a metadata path that differs from the registration's is refused, named."""
    from panet_d2.data.synthetic import get_synthetic_metadata

    meta = dict(get_synthetic_metadata(), ignore_label=254)
    files = [str(tmp_path / n) for n in ("images", "panoptic", "panoptic.json")]
    register_coco_panoptic_panet("t_reg_ignore", meta, *files, replace=True)
    registered = MetadataCatalog.get("t_reg_ignore")
    assert (registered.ignore_label, registered.label_divisor) == (254, 1000)
    assert registered.image_root == files[0] and registered.evaluator_type == "coco_panoptic_seg"
    with pytest.raises(DatasetError, match=r"metadata's image_root='elsewhere' differs from"):
        register_coco_panoptic_panet("t_reg_clash", dict(meta, image_root="elsewhere"), *files)
    register_coco_panoptic_panet("t_reg_same", dict(meta, image_root=files[0]), *files)
