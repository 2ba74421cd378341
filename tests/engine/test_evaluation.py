# -*- coding: utf-8 -*-
"""
Tests of panet_d2.evaluation: the evaluators chosen by a dataset's evaluator_type, and
PanopticEvaluator's conversion of the model's separated label ids to the dataset's.
"""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

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
from panet_d2.compat import cityscapes_api_alias, cityscapesscripts_fixes  # noqa: E402
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
    monkeypatch.setattr(evaluation.build, "LVISEvaluator", lambda *args, **kwargs: "lvis")
    assert build_evaluator(cfg, _dataset("t_eval_lvis", evaluator_type="lvis")) == "lvis"


def test_unknown_evaluator_type(cfg):
    for name, metadata, found in [
        ("t_eval_weird", {"evaluator_type": "weird"}, "evaluator_type 'weird'"),
        ("t_eval_none", {}, "no evaluator_type"),
    ]:
        with pytest.raises(DatasetError) as e:
            build_evaluator(cfg, _dataset(name, **metadata))
        assert str(e.value) == (
            "No evaluator for the test dataset {!r}: it has {} in its metadata. Supported "
            "evaluator types: coco, coco_panoptic_seg, sem_seg, cityscapes_instance, "
            "cityscapes_sem_seg, cityscapes_panoptic_seg, pascal_voc, lvis.".format(name, found)
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
        **{k: meta.get(k) for k in keys},
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


def _panoptic_cfg(cfg, train, num_sem_classes=12):
    cfg.MODEL.META_ARCHITECTURE = "PanopticPANet"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_sem_classes
    cfg.DATASETS.TRAIN = (train,)
    return cfg


def test_semantic_evaluation_of_a_panoptic_model(synth, cfg):
    # Cityscapes: 12 channels (0 = things, 1..11 = stuff trainIds 0..10) -> the 19 trainIds
    _panoptic_cfg(cfg, "cityscapes_fine_panoptic_train")
    evaluator = build_evaluator(cfg, "cityscapes_fine_sem_seg_val")
    assert isinstance(evaluator, evaluation.PanopticToSemSeg)
    assert isinstance(evaluator._evaluator, CityscapesSemSegEvaluator)
    scores = torch.zeros(12, 2, 4)  # one-hot, with one more score at (1, 1)
    channels = [[0, 1, 11, 5], [0, 0, 3, 4]]  # 0 = things, s = stuff trainId s - 1
    for (y, x), channel in np.ndenumerate(np.array(channels)):
        scores[channel, y, x] = 1.0
    scores[2, 1, 1] = 0.5  # things, in no thing segment: its most likely stuff, sidewalk
    panoptic = torch.tensor([[1, 0, 0, 0], [2, 0, 0, 2]], dtype=torch.int32)
    segments = [
        {"id": 1, "category_id": 2, "isthing": True},  # car, trainId 13
        {"id": 2, "category_id": 7, "isthing": True},  # bicycle, 18; over the wall at (1, 3)
        {"id": 3, "category_id": 1, "isthing": False},  # no pixel
    ]
    out = evaluator._convert({"sem_seg": scores, "panoptic_seg": (panoptic, segments)})
    assert out.shape == (19, 2, 4) and out.dtype == torch.uint8 and (out.sum(0) == 1).all()
    assert out.argmax(0).tolist() == [[13, 0, 10, 4], [18, 1, 2, 3]]

    # the model's classes are the dataset's ("things" + stuff): nothing converted
    meta = MetadataCatalog.get(synth + "_panoptic")
    space = evaluation.PanopticLabelSpace.from_metadata(meta)
    _panoptic_cfg(cfg, synth + "_panoptic", space.num_sem_classes)
    assert type(build_evaluator(cfg, synth + "_sem_seg")) is SemSegEvaluator
    # an instance model: never converted
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    assert (
        type(build_evaluator(cfg, "cityscapes_fine_sem_seg_val"))
        is evaluation.CityscapesSemSegEvaluator
    )


def test_semantic_evaluation_refused_up_front(synth, cfg):
    from panet_d2 import add_panet_config
    from panet_d2.engine.checks import check_inputs
    from panet_d2.model_zoo import get_config_file

    add_panet_config(cfg)  # a valid panoptic model, for check_inputs
    cfg.merge_from_file(get_config_file("quick_schedules/panoptic_panet_R_18_synth.yaml"))
    cfg.MODEL.WEIGHTS = ""
    # the synthetic classes are not Cityscapes': one line, before anything is built
    meta = MetadataCatalog.get(synth + "_panoptic")
    space = evaluation.PanopticLabelSpace.from_metadata(meta)
    _panoptic_cfg(cfg, synth + "_panoptic", space.num_sem_classes)
    cfg.DATASETS.TEST = ("cityscapes_fine_sem_seg_val",)
    message = (
        "Test dataset 'cityscapes_fine_sem_seg_val' (19 semantic classes) cannot evaluate the "
        "semantic output of MODEL.META_ARCHITECTURE='PanopticPANet' "
        "(MODEL.SEM_SEG_HEAD.NUM_CLASSES={}: {} stuff + 1 'things', and {} thing classes, of "
        "{!r}): the dataset has no class {!r}".format(
            space.num_sem_classes,
            space.num_stuff,
            space.num_things,
            synth + "_panoptic",
            space.thing_classes[0],
        )
    )
    with pytest.raises(DatasetError) as e:
        evaluation.panoptic_to_dataset_classes(cfg, "cityscapes_fine_sem_seg_val")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    # the same check in check_inputs, before training: a dataset with files and Cityscapes' classes
    classes = MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes
    records = DatasetCatalog.get(synth + "_sem_seg")
    cfg.DATASETS.TEST = (
        _dataset("t_eval_cs", records, evaluator_type="sem_seg", stuff_classes=classes),
    )
    with pytest.raises(
        DatasetError, match="^Test dataset 't_eval_cs' .19 semantic classes.*PanopticPANet"
    ):
        check_inputs(cfg, train=False)
    # no panoptic training dataset names the model's classes, and the numbers differ
    _panoptic_cfg(cfg, synth + "_sem_seg", 12)
    with pytest.raises(DatasetError, match=r"NUM_CLASSES=12\): no panoptic dataset in DATASETS"):
        build_evaluator(cfg, "cityscapes_fine_sem_seg_val")


def test_cityscapes_evaluators_fixes(tmp_path, monkeypatch):
    """Detectron2's import path of cityscapesscripts resolves; NumPy >= 2.4 fixes and the
    matches.json folder apply during an evaluation only."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as instance_eval

    with cityscapes_api_alias():
        from deeplearning.projects.cityscapesApi.cityscapesscripts.evaluation import (
            evalInstanceLevelSemanticLabeling as alias,
        )

    assert alias is instance_eval
    original = instance_eval.writeDict2JSON, instance_eval.np
    with cityscapesscripts_fixes(instance_eval, json_folder=str(tmp_path)):
        ones = instance_eval.np.in1d(np.arange(4).reshape(2, 2), [1, 3])
        assert ones.tolist() == [False, True, False, True]
        monkeypatch.chdir(tmp_path / "..")
        instance_eval.writeDict2JSON({"n": np.count_nonzero(np.ones(3))}, "matches.json")
    assert (instance_eval.writeDict2JSON, instance_eval.np) == original
    assert (tmp_path / "matches.json").read_text().split() == ["{", '"n":', "3", "}"]


def test_semantic_ground_truth_labels_checked(synth, cfg, tmp_path):
    """A ground-truth label that is neither a class (0..N-1 of stuff_classes) nor ignore_label
    stops the evaluation at its image with one line. Detectron2's SemSegEvaluator counts it in
    another class's cell (N+1 -> the next prediction row) or as void (N), silently."""
    classes = ["a", "b", "c"]
    image, labels = str(tmp_path / "x.png"), str(tmp_path / "x_gt.png")
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(image)
    record = {"file_name": image, "sem_seg_file_name": labels, "height": 2, "width": 4}
    meta = {"evaluator_type": "sem_seg", "stuff_classes": classes, "ignore_label": 255}
    name = _dataset("t_eval_labels", [record], **meta)
    pred = torch.zeros(3, 2, 4)
    pred[0] = 1.0  # class 0 everywhere
    for gt, allowed in (([0, 1, 2, 255], True), ([0, 4, 3, 255], False)):
        Image.fromarray(np.array([gt, gt], np.uint8)).save(labels)
        evaluator = build_evaluator(cfg, name)
        evaluator.reset()
        if allowed:
            evaluator.process([record], [{"sem_seg": pred}])
            conf = evaluator._conf_matrix  # (pred, gt), the last row / column void
            assert conf[0, :3].tolist() == [2, 2, 2] and conf.sum() == 8
            continue
        with pytest.raises(DatasetError) as e:
            evaluator.process([record], [{"sem_seg": pred}])
        assert str(e.value) == (
            f"Semantic label PNG {labels!r} holds the label 3 (and 1 other values out of range): "
            "dataset 't_eval_labels' (3 stuff_classes) allows 0..2 and the ignore value 255."
        )
