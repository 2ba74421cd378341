# -*- coding: utf-8 -*-
"""
Tests of panet_d2.evaluation: the evaluators chosen by a dataset's evaluator_type, and
PanopticEvaluator's conversion of the model's separated label ids to the dataset's.
"""

import logging

import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("panopticapi")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import (  # noqa: E402
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)

import panet_d2.evaluation as evaluation  # noqa: E402
from panet_d2.data import register_synthetic_dataset  # noqa: E402
from panet_d2.errors import DatasetError  # noqa: E402
from panet_d2.evaluation import PanopticEvaluator, build_evaluator  # noqa: E402

PREFIX = "test_engine_eval"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The generated dataset (2 images) under test names, in a temporary folder."""
    register_synthetic_dataset(
        PREFIX,
        root=str(tmp_path_factory.mktemp("data")),
        splits={"val": {"num_images": 2, "seed": 1}},
    )
    return PREFIX + "_val"


@pytest.fixture
def cfg(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def _dataset(name, records=(), **metadata):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(**metadata)
    return name


def _types(evaluator):
    return [type(e) for e in evaluator._evaluators]


def test_evaluators_by_type(synth, cfg, monkeypatch):
    assert isinstance(build_evaluator(cfg, synth), COCOEvaluator)
    assert _types(build_evaluator(cfg, synth + "_panoptic")) == [
        PanopticEvaluator,
        COCOEvaluator,
        SemSegEvaluator,
    ]
    assert isinstance(build_evaluator(cfg, synth + "_sem_seg"), SemSegEvaluator)
    for etype, cls in [
        ("cityscapes_instance", CityscapesInstanceEvaluator),
        ("cityscapes_sem_seg", CityscapesSemSegEvaluator),
        ("pascal_voc", PascalVOCDetectionEvaluator),
    ]:
        voc = dict(dirname=".", split="val", year=2007)  # PascalVOCDetectionEvaluator reads them
        name = _dataset("t_eval_" + etype, evaluator_type=etype, thing_classes=["a"], **voc)
        assert isinstance(build_evaluator(cfg, name), cls)
    pan = build_evaluator(cfg, "cityscapes_fine_panoptic_val")  # Detectron2's registration
    assert isinstance(pan, PanopticEvaluator)
    monkeypatch.setattr(evaluation, "LVISEvaluator", lambda *args, **kwargs: "lvis")
    assert build_evaluator(cfg, _dataset("t_eval_lvis", evaluator_type="lvis")) == "lvis"


def test_unknown_evaluator_type(cfg):
    for name, metadata, found in [
        ("t_eval_weird", {"evaluator_type": "weird"}, "evaluator_type 'weird'"),
        ("t_eval_none", {}, "no evaluator_type in its metadata"),
    ]:
        with pytest.raises(DatasetError) as e:
            build_evaluator(cfg, _dataset(name, **metadata))
        assert str(e.value) == (
            "No evaluator for the test dataset {!r}: it has {}. Supported evaluator types: coco, "
            "coco_panoptic_seg, sem_seg, cityscapes_instance, cityscapes_sem_seg, "
            "cityscapes_panoptic_seg, pascal_voc, lvis.".format(name, found)
        )


def test_coco_panoptic_without_instances_json_or_semantic_pngs(synth, cfg, caplog):
    # the panoptic records of the generated dataset, without their semantic PNGs, registered
    # without the instances json: PQ only, and a line says why there is no AP
    records = [
        {k: v for k, v in r.items() if k != "sem_seg_file_name"}
        for r in DatasetCatalog.get(synth + "_panoptic")
    ]
    meta = MetadataCatalog.get(synth + "_panoptic")
    keys = ["thing_classes", "stuff_classes", "panoptic_json", "panoptic_root", "image_root"]
    keys += ["thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"]
    name = _dataset(
        "t_eval_pq_only",
        records,
        evaluator_type="coco_panoptic_seg",
        **{k: meta.get(k) for k in keys}
    )
    with caplog.at_level(logging.INFO, logger="panet_d2.evaluation"):
        assert _types(build_evaluator(cfg, name)) == [PanopticEvaluator]
    assert "No box/mask AP on 't_eval_pq_only'" in caplog.text


def _segments(evaluator, segments_info):
    evaluator.reset()
    inputs = [{"file_name": "a.png", "image_id": 1}]
    outputs = [{"panoptic_seg": (torch.zeros(4, 4, dtype=torch.int32), segments_info)}]
    evaluator.process(inputs, outputs)
    return [(s["category_id"], s["id"]) for s in evaluator._predictions[0]["segments_info"]]


MODEL_SEGMENTS = [  # the model's convention: things 0..T-1, stuff 1..S
    {"id": 1, "category_id": 0, "isthing": True},
    {"id": 2, "category_id": 1, "isthing": True},
    {"id": 3, "category_id": 1, "isthing": False},
    {"id": 4, "category_id": 2, "isthing": False},
]


def test_panoptic_evaluator_converts_to_the_dataset_ids():
    # Cityscapes: things are trainIds 11..18 (person 24, rider 25), stuff 0..10 (road 7, ...)
    evaluator = PanopticEvaluator("cityscapes_fine_panoptic_val")
    assert _segments(evaluator, MODEL_SEGMENTS) == [(24, 1), (25, 2), (7, 3), (8, 4)]
    # COCO panoptic, standard convention: stuff are contiguous ids 80..132 (things 0..79)
    evaluator = PanopticEvaluator("coco_2017_val_panoptic")
    assert _segments(evaluator, MODEL_SEGMENTS) == [(1, 1), (2, 2), (92, 3), (93, 4)]
    # separated convention: no conversion, same ids as Detectron2's COCOPanopticEvaluator
    evaluator = PanopticEvaluator("coco_2017_val_panoptic_separated")
    assert _segments(evaluator, MODEL_SEGMENTS) == [(1, 1), (2, 2), (92, 3), (93, 4)]
    # segments_info None (category ids in the image, label_divisor): left to Detectron2
    assert _segments(PanopticEvaluator("cityscapes_fine_panoptic_val"), None) == [(7, 1)]
