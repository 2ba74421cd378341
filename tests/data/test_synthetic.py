# -*- coding: utf-8 -*-
"""Tests of the generated dataset (panet_d2/data/synthetic.py): files, views, evaluators."""

import filecmp
import os

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("panopticapi")

import pycocotools.mask as mask_util  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402

from panet_d2.data.synthetic import (  # noqa: E402
    DEFAULT_SPLITS,
    SYNTHETIC_STUFF_CLASSES,
    SYNTHETIC_THING_CLASSES,
    generate_synthetic_dataset,
    get_synthetic_dataset_root,
    register_synthetic_dataset,
)
from panet_d2.errors import DatasetError  # noqa: E402

from ..common import panoptic_ids, read_png  # noqa: E402

PREFIX = "test_panet_synth"


def _files(d):
    out = []
    for dirpath, _, names in os.walk(d):
        out += [os.path.relpath(os.path.join(dirpath, n), d) for n in names]
    return sorted(out)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """The default splits registered under PREFIX with a temporary cache directory."""
    root = str(tmp_path_factory.mktemp("panet_synth_cache"))
    names = register_synthetic_dataset(PREFIX, root=root)
    # lazy: registering does not generate anything
    assert not os.listdir(root)
    assert len(names) in (0, 3 * len(DEFAULT_SPLITS))
    return root


def test_determinism(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), "x", 4, seed=3, image_size=96)
    b = generate_synthetic_dataset(str(tmp_path / "b"), "x", 4, seed=3, image_size=96)
    c = generate_synthetic_dataset(str(tmp_path / "c"), "x", 4, seed=4, image_size=96)
    files = _files(a["dir"])
    assert len(files) == 3 * 4 + 2  # 3 PNGs per image, 2 jsons
    assert files == _files(b["dir"]) == _files(c["dir"])
    _, mismatch, errors = filecmp.cmpfiles(a["dir"], b["dir"], files, shallow=False)
    assert not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(a["dir"], c["dir"], files, shallow=False)
    assert any(f.startswith("images") for f in mismatch)
    # reuse: a second call does not rewrite anything
    mtime = os.path.getmtime(a["instances_json"])
    assert generate_synthetic_dataset(str(tmp_path / "a"), "x", 4, seed=3, image_size=96) == a
    assert os.path.getmtime(a["instances_json"]) == mtime
    # non-square sizes
    d = generate_synthetic_dataset(str(tmp_path / "a"), "y", 2, seed=3, image_size=(64, 80))
    assert read_png(os.path.join(d["image_root"], "000001.png")).shape == (64, 80, 3)


def test_env_root_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PANET_D2_DATASETS", str(tmp_path / "env"))
    assert get_synthetic_dataset_root() == str(tmp_path / "env")
    paths = generate_synthetic_dataset(None, "e", 2, seed=0, image_size=64)
    assert paths["dir"].startswith(str(tmp_path / "env"))

    # not writable: the cache "directory" is below a regular file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="PANET_D2_DATASETS"):
        generate_synthetic_dataset(str(blocker / "sub"), "e", 2, seed=0, image_size=64)

    # missing / corrupt generated files
    os.remove(os.path.join(paths["sem_seg_root"], "000002.png"))
    with pytest.raises(DatasetError, match="sem_seg/000002.png"):
        generate_synthetic_dataset(None, "e", 2, seed=0, image_size=64)
    with open(paths["panoptic_json"], "w") as f:
        f.write("{not json")
    with pytest.raises(DatasetError, match="panoptic.json"):
        generate_synthetic_dataset(None, "e", 2, seed=0, image_size=64)


def test_registration(tmp_path, monkeypatch):
    import panet_d2.data  # noqa: F401  (registers the default names)

    for split in DEFAULT_SPLITS:
        for suffix in ("", "_panoptic", "_sem_seg"):
            assert f"panet_synth_{split}{suffix}" in DatasetCatalog.list()
    # safe to call twice
    assert register_synthetic_dataset() == []
    meta = MetadataCatalog.get("panet_synth_val_panoptic")
    assert meta.evaluator_type == "coco_panoptic_seg"
    for key in (
        "thing_classes",
        "thing_dataset_id_to_contiguous_id",
        "stuff_classes",
        "stuff_dataset_id_to_contiguous_id",
        "panoptic_root",
        "panoptic_json",
        "json_file",
        "image_root",
        "sem_seg_root",
        "ignore_label",
        "label_divisor",
    ):
        assert hasattr(meta, key), key
    assert MetadataCatalog.get("panet_synth_train").evaluator_type == "coco"
    assert MetadataCatalog.get("panet_synth_train_sem_seg").evaluator_type == "sem_seg"
    # $PANET_D2_DATASETS is read when a file is asked for, not at import: the split goes there
    monkeypatch.setenv("PANET_D2_DATASETS", str(tmp_path / "late"))
    assert meta.json_file.startswith(str(tmp_path / "late")) and os.path.isfile(meta.json_file)
    assert "_val_seed" in meta.json_file


def test_env_read_when_loading(tmp_path, monkeypatch):
    """Registered with root=None, a split goes where $PANET_D2_DATASETS points when it is loaded."""
    monkeypatch.setenv("PANET_D2_DATASETS", str(tmp_path / "before"))
    register_synthetic_dataset("test_env_synth", splits={"a": {"num_images": 1, "seed": 1}})
    monkeypatch.setenv("PANET_D2_DATASETS", str(tmp_path / "after"))
    (d,) = DatasetCatalog.get("test_env_synth_a_panoptic")
    assert d["file_name"].startswith(str(tmp_path / "after"))
    assert not os.path.exists(tmp_path / "before")
    assert MetadataCatalog.get("test_env_synth_a").json_file.startswith(str(tmp_path / "after"))


def test_views(synth_root):
    for split, spec in DEFAULT_SPLITS.items():
        n = spec["num_images"]
        inst = DatasetCatalog.get(f"{PREFIX}_{split}")
        pan = DatasetCatalog.get(f"{PREFIX}_{split}_panoptic")
        sem = DatasetCatalog.get(f"{PREFIX}_{split}_sem_seg")
        assert len(inst) == len(pan) == len(sem) == n
        assert sum(len(d["annotations"]) for d in inst) == sum(len(d["annotations"]) for d in pan)
        for d in pan:
            for key in (
                "file_name",
                "image_id",
                "height",
                "width",
                "pan_seg_file_name",
                "sem_seg_file_name",
                "segments_info",
                "annotations",
            ):
                assert key in d, key
            for a in d["annotations"]:
                assert a["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= a["category_id"] < len(SYNTHETIC_THING_CLASSES)
                assert isinstance(a["segmentation"]["counts"], str)
            for s in d["segments_info"]:
                if s["isthing"]:
                    assert 0 <= s["category_id"] < len(SYNTHETIC_THING_CLASSES)
                else:
                    assert 1 <= s["category_id"] <= len(SYNTHETIC_STUFF_CLASSES)
        assert set(sem[0]) >= {"file_name", "sem_seg_file_name"}

        m_inst = MetadataCatalog.get(f"{PREFIX}_{split}")
        assert m_inst.thing_classes == SYNTHETIC_THING_CLASSES
        assert m_inst.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
        assert os.path.isfile(m_inst.json_file) and os.path.isdir(m_inst.image_root)
        m_pan = MetadataCatalog.get(f"{PREFIX}_{split}_panoptic")
        assert m_pan.stuff_classes == ["things"] + SYNTHETIC_STUFF_CLASSES
        assert m_pan.ignore_label == 255
        assert os.path.isfile(m_pan.panoptic_json) and os.path.isdir(m_pan.panoptic_root)
        m_sem = MetadataCatalog.get(f"{PREFIX}_{split}_sem_seg")
        assert m_sem.stuff_classes == m_pan.stuff_classes
    # registering the same names again is a no-op
    assert register_synthetic_dataset(PREFIX, root=synth_root) == []


def test_pixel_agreement(synth_root):
    meta = MetadataCatalog.get(f"{PREFIX}_train_panoptic")
    num_void, boxes_overlap, areas = 0, False, []
    for split in DEFAULT_SPLITS:
        for d in DatasetCatalog.get(f"{PREFIX}_{split}_panoptic"):
            pan = panoptic_ids(d["pan_seg_file_name"])
            sem = read_png(d["sem_seg_file_name"])
            image = read_png(d["file_name"])
            assert image.shape == (d["height"], d["width"], 3) and image.dtype == np.uint8
            assert sem.shape == pan.shape == (d["height"], d["width"])
            ids = [s["id"] for s in d["segments_info"]]
            assert len(set(ids)) == len(ids) and 0 not in ids
            assert set(np.unique(pan).tolist()) - {0} == set(ids)

            expected_sem = np.full(pan.shape, 255, np.uint8)
            anns = list(d["annotations"])
            decoded = [mask_util.decode(a["segmentation"]).astype(bool) for a in anns]
            for s in d["segments_info"]:
                m = pan == s["id"]
                assert int(m.sum()) == s["area"] > 0
                ys, xs = np.nonzero(m)
                assert s["bbox"] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]
                if s["isthing"]:
                    expected_sem[m] = 0
                    match = [
                        i
                        for i, (a, dm) in enumerate(zip(anns, decoded))
                        if a["category_id"] == s["category_id"] and np.array_equal(dm, m)
                    ]
                    assert len(match) == 1, (d["file_name"], s)
                    a = anns[match[0]]
                    assert a["bbox"] == [float(x) for x in s["bbox"]]
                    assert a.get("iscrowd", 0) == 0 and s["area"] >= 20
                    areas.append(s["area"])
                else:
                    expected_sem[m] = s["category_id"]
            assert len(anns) == sum(s["isthing"] for s in d["segments_info"])
            np.testing.assert_array_equal(sem, expected_sem)
            num_void += int((pan == 0).sum() > 0)

            xyxy = np.array(
                [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
            ).reshape(-1, 4)
            for i in range(len(xyxy)):
                for j in range(i + 1, len(xyxy)):
                    ix = min(xyxy[i, 2], xyxy[j, 2]) - max(xyxy[i, 0], xyxy[j, 0])
                    iy = min(xyxy[i, 3], xyxy[j, 3]) - max(xyxy[i, 1], xyxy[j, 1])
                    boxes_overlap |= bool(ix > 0 and iy > 0)
    assert num_void > 0
    assert boxes_overlap
    assert max(areas) > 10 * min(areas)
    assert meta.stuff_dataset_id_to_contiguous_id[4] == 1


def test_panoptic_evaluator_gt_is_perfect(synth_root):
    from detectron2.evaluation import COCOPanopticEvaluator

    name = f"{PREFIX}_val_panoptic"
    evaluator = COCOPanopticEvaluator(name)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        pan = torch.as_tensor(panoptic_ids(d["pan_seg_file_name"]).astype(np.int32))
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in d["segments_info"]
        ]
        evaluator.process([d], [{"panoptic_seg": (pan, segments)}])
    res = evaluator.evaluate()["panoptic_seg"]
    assert res["PQ"] == pytest.approx(100.0)
    assert res["PQ_th"] == pytest.approx(100.0) and res["PQ_st"] == pytest.approx(100.0)


def test_coco_evaluator_gt_is_perfect(synth_root):
    from detectron2.evaluation import COCOEvaluator

    name = f"{PREFIX}_val_panoptic"
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        anns = d["annotations"]
        inst = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        inst.scores = torch.ones(len(anns))
        masks = [mask_util.decode(a["segmentation"]) for a in anns]
        inst.pred_masks = torch.as_tensor(
            np.stack(masks) if masks else np.zeros((0, d["height"], d["width"])), dtype=torch.bool
        )
        evaluator.process([d], [{"instances": inst}])
    res = evaluator.evaluate()
    assert res["bbox"]["AP"] > 99.9
    assert res["segm"]["AP"] > 99.9


def test_sem_seg_evaluator_gt_is_perfect(synth_root):
    from detectron2.evaluation import SemSegEvaluator

    for name in (f"{PREFIX}_val_panoptic", f"{PREFIX}_val_sem_seg"):
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        num_classes = len(MetadataCatalog.get(name).stuff_classes)
        for d in DatasetCatalog.get(name):
            gt = torch.as_tensor(read_png(d["sem_seg_file_name"]).astype(np.int64))
            gt[gt == 255] = 0  # void: any prediction
            logits = torch.nn.functional.one_hot(gt, num_classes).permute(2, 0, 1).float()
            evaluator.process([d], [{"sem_seg": logits}])
        res = evaluator.evaluate()["sem_seg"]
        assert res["mIoU"] == pytest.approx(100.0)
