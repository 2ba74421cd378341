# -*- coding: utf-8 -*-
"""
Cityscapes end to end, in Cityscapes' own layout: a tiny tree as Cityscapes ships it
(``leftImg8bit/``, ``gtFine/`` with ``*_polygons.json`` and the ``*_labelIds.png``,
``*_instanceIds.png``, ``*_color.png`` that cityscapesscripts draws from them), cityscapesscripts'
own converters (``createTrainIdLabelImgs``, ``createPanopticImgs``), Detectron2's builtin
Cityscapes datasets (``builtin.register_all_cityscapes`` and
``cityscapes_panoptic.register_all_cityscapes_panoptic``, pointed at the tree), then the project's
trainer on the Cityscapes configs (shrunk: ResNet-18 from scratch, 128 x 256 images, 2
iterations) with the Cityscapes evaluators: instance segmentation (CityscapesInstanceEvaluator),
semantic segmentation (CityscapesSemSegEvaluator) and panoptic segmentation (PQ on Detectron2's
Cityscapes panoptic metadata). A model that outputs the ground truth in PanopticPANet's label
convention checks the conversions to Cityscapes' ids (PQ and IoU 100).

Detectron2's import path of cityscapesscripts (issue #5436) and cityscapesscripts 2.3.0 with
NumPy >= 2.4 are handled by the project (panet_d2.evaluation), not here: the tests run in an empty
working folder and check that the evaluation wrote nothing there.
"""

import contextlib
import json
import math
import multiprocessing
import os

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("panopticapi")
# not skipped without them: setup.py's "cityscapes" extra (shapely: Detectron2's Cityscapes
# instance loader, from_json=True)
import cityscapesscripts  # noqa: E402, F401
import shapely  # noqa: E402, F401
from PIL import Image, ImageDraw  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import builtin, cityscapes_panoptic  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from panet_d2 import add_panet_config  # noqa: E402
from panet_d2.compat import cityscapes_api_alias  # noqa: E402
from panet_d2.engine import PANetTrainer  # noqa: E402

from ..common import R18, panoptic_ids  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread", "empty_cwd")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
H, W = 128, 256
# split -> city -> (sequence, frame) of each image
SCENES = {
    "train": {"aachen": [("000000", "000019"), ("000001", "000019")]},
    "val": {"frankfurt": [("000000", "000294"), ("000001", "000508")]},
}
NUM_STUFF = 11  # Cityscapes trainIds: stuff 0..10, things 11..18
PQ_KEYS = ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"]
IOU_KEYS = ["IoU", "iIoU", "IoU_sup", "iIoU_sup"]


# ------------------------------------------------------------------------------------------------
# a tiny Cityscapes, as shipped
# ------------------------------------------------------------------------------------------------
def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _objects(k):
    """The polygons of image ``k``, drawn in order (later ones on top), as in Cityscapes."""
    dx = 10 * k
    return [
        ("sky", _rect(0, 0, 255, 40)),
        ("building", _rect(0, 40, 255, 64)),
        ("vegetation", [[180, 30], [255, 20], [255, 70], [180, 70]]),
        ("road", _rect(0, 64, 255, 127)),
        ("sidewalk", [[0, 100], [60, 92], [70, 127], [0, 127]]),
        ("car", _rect(20 + dx, 70, 90 + dx, 110)),
        ("car", _rect(110, 74, 170, 106)),
        ("person", _rect(186 - dx, 38, 204 - dx, 100)),
        ("bicycle", [[180 - dx, 80], [214 - dx, 80], [214 - dx, 104], [180 - dx, 104]]),
        ("persongroup", _rect(222, 48, 250, 92)),  # a crowd
        ("ego vehicle", _rect(0, 120, 255, 127)),
    ]


def _write_cityscapes(root):
    """``root``/leftImg8bit and ``root``/gtFine as Cityscapes ships them."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    rng = np.random.RandomState(0)
    k = 0
    for split, cities in SCENES.items():
        for city, frames in cities.items():
            os.makedirs(os.path.join(root, "leftImg8bit", split, city))
            os.makedirs(os.path.join(root, "gtFine", split, city))
            for seq, frame in frames:
                base = "{}_{}_{}".format(city, seq, frame)
                objects = _objects(k)
                k += 1
                image = Image.new("RGB", (W, H))
                draw = ImageDraw.Draw(image)
                for label, polygon in objects:
                    color = name2label[label.replace("group", "")].color
                    draw.polygon([tuple(p) for p in polygon], fill=color)
                noisy = np.asarray(image, dtype=np.int16) + rng.randint(-20, 21, (H, W, 3))
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(
                    os.path.join(root, "leftImg8bit", split, city, base + "_leftImg8bit.png")
                )
                gt = os.path.join(root, "gtFine", split, city, base + "_gtFine_")
                polygons = {
                    "imgHeight": H,
                    "imgWidth": W,
                    "objects": [{"label": label, "polygon": p} for label, p in objects],
                }
                with open(gt + "polygons.json", "w") as f:
                    json.dump(polygons, f)
                json2labelImg(gt + "polygons.json", gt + "labelIds.png", "ids")
                json2labelImg(gt + "polygons.json", gt + "color.png", "color")
                # json2instanceImg's image, saved as a 16-bit PNG as Cityscapes ships it (its own
                # save of a 32-bit "I" image fails with recent Pillow: "cannot write mode I")
                annotation = Annotation()
                annotation.fromJsonFile(gt + "polygons.json")
                ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.uint16)
                Image.fromarray(ids).save(gt + "instanceIds.png")


def _run_cityscapes_converters(root):
    """cityscapesscripts' preparation scripts, as their README runs them (CITYSCAPES_DATASET)."""
    from cityscapesscripts.preparation import createPanopticImgs, createTrainIdLabelImgs

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CITYSCAPES_DATASET", root)
        createTrainIdLabelImgs.main()  # gtFine/*/*/*_labelTrainIds.png
        createPanopticImgs.convert2panoptic(setNames=["train", "val"])  # cityscapes_panoptic_*


_CITYSCAPES_NAMES = [
    key.format(task=task)
    for key in builtin._RAW_CITYSCAPES_SPLITS
    for task in ("instance_seg", "sem_seg")
] + list(cityscapes_panoptic._RAW_CITYSCAPES_PANOPTIC_SPLITS)


@contextlib.contextmanager
def _builtin_cityscapes_at(root):
    """Detectron2's builtin Cityscapes datasets (names, loaders, metadata) with the root ``root``
    (as DETECTRON2_DATASETS=root would give them); then back to the import-time root."""

    def register(at):
        for name in _CITYSCAPES_NAMES:
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        builtin.register_all_cityscapes(at)
        cityscapes_panoptic.register_all_cityscapes_panoptic(at)

    register(root)
    try:
        yield
    finally:
        register(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """The root of the registered tiny Cityscapes (``<root>/cityscapes``)."""
    root = str(tmp_path_factory.mktemp("datasets"))
    _write_cityscapes(os.path.join(root, "cityscapes"))
    _run_cityscapes_converters(os.path.join(root, "cityscapes"))
    with _builtin_cityscapes_at(root):
        yield root


@pytest.fixture
def empty_cwd(tmp_path_factory, monkeypatch):
    """An empty working folder, which must stay empty (the evaluators write under OUTPUT_DIR)."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert os.listdir(cwd) == []


# ------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------
def test_detectron2_cityscapes_import_path():
    """The project's alias for Detectron2's import path: the installed modules themselves."""
    import cityscapesscripts.helpers.labels as labels

    with cityscapes_api_alias():
        from deeplearning.projects.cityscapesApi.cityscapesscripts.helpers import labels as alias

    assert alias is labels and alias.__spec__.name == "cityscapesscripts.helpers.labels"


def test_instance_loader_workers_of_any_start_method(cityscapes):
    """Detectron2's Cityscapes instance loader reads the files in a multiprocessing pool: its
    workers find the alias also where processes start by forkserver (Python 3.14's default)."""
    start_method = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        with cityscapes_api_alias():
            inst = DatasetCatalog.get("cityscapes_fine_instance_seg_train")
    finally:
        multiprocessing.set_start_method(start_method, force=True)
    assert len(inst) == 2 and all(d["annotations"] for d in inst)


def test_converters_and_loaders(cityscapes):
    """What the converters wrote, as Detectron2's builtin loaders read it."""
    with cityscapes_api_alias():  # Detectron2 issue #5436
        inst = DatasetCatalog.get("cityscapes_fine_instance_seg_train")
    assert len(inst) == 2
    meta = MetadataCatalog.get("cityscapes_fine_instance_seg_train")
    classes = sorted(meta.thing_classes[a["category_id"]] for a in inst[0]["annotations"])
    assert classes == ["bicycle", "car", "car", "person", "person"]  # the crowd too
    assert [a["iscrowd"] for a in inst[0]["annotations"]].count(True) == 1

    with cityscapes_api_alias():  # Detectron2 issue #5436
        sem = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(sem) == 2
    train_ids = np.asarray(Image.open(sem[0]["sem_seg_file_name"]))
    # trainIds: road 0, sidewalk 1, building 2, vegetation 8, sky 10, person 11, car 13,
    # bicycle 18; ego vehicle 255
    assert set(np.unique(train_ids).tolist()) == {0, 1, 2, 8, 10, 11, 13, 18, 255}

    pan = DatasetCatalog.get("cityscapes_fine_panoptic_train")
    assert len(pan) == 2
    segments = pan[0]["segments_info"]
    pan_meta = MetadataCatalog.get("cityscapes_fine_panoptic_train")
    things = set(pan_meta.thing_dataset_id_to_contiguous_id.values())
    # category ids are Cityscapes trainIds (Detectron2's contiguous ids): 5 things (a crowd among
    # them), 5 stuff classes
    assert sum(s["category_id"] in things for s in segments) == 5
    assert sum(s["category_id"] not in things for s in segments) == 5
    assert sum(s["iscrowd"] for s in segments) == 1


def _cfg(config, output_dir, *opts):
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Cityscapes", config))
    small = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        "",
        *R18,
        "MODEL.BACKBONE.FREEZE_AT",
        0,
        "MODEL.FPN.OUT_CHANNELS",
        32,
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
        200,
        "MODEL.RPN.PRE_NMS_TOPK_TEST",
        200,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        50,
        "MODEL.RPN.POST_NMS_TOPK_TEST",
        50,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        32,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.0,  # a 2-iteration model: keep its detections
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        64,
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        32,
        "MODEL.FF.CONV_DIMS",
        [32, 16],
        "INPUT.MIN_SIZE_TRAIN",
        (H,),
        "INPUT.MAX_SIZE_TRAIN",
        W,
        "INPUT.MIN_SIZE_TEST",
        H,
        "INPUT.MAX_SIZE_TEST",
        W,
        "SOLVER.IMS_PER_BATCH",
        2,
        "SOLVER.BASE_LR",
        0.001,
        "SOLVER.STEPS",
        (),
        "SOLVER.MAX_ITER",
        2,
        "SOLVER.WARMUP_ITERS",
        0,
        "SOLVER.CHECKPOINT_PERIOD",
        1000,
        "TEST.EVAL_PERIOD",
        0,
        "TEST.DETECTIONS_PER_IMAGE",
        20,
        "DATALOADER.NUM_WORKERS",
        0,
        "OUTPUT_DIR",
        output_dir,
        "SEED",
        1,
    ]
    cfg.merge_from_list(small + list(opts))
    return cfg


def _check_metrics(results, task, keys):
    assert task in results, results.keys()
    for k in keys:
        value = results[task][k]
        assert isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 100.0), (k, value)


def test_instance_segmentation(cityscapes, tmp_path):
    cfg = _cfg("panet_R_50_FPN.yaml", str(tmp_path))
    seed_all_rng(0)  # a run from scratch that does not depend on chance
    trainer = PANetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    _check_metrics(results, "segm", ["AP", "AP50"])
    # cityscapesscripts' matches.json, in the output folder
    with open(os.path.join(str(tmp_path), "inference", "matches.json")) as f:
        assert len(json.load(f)) == 2


def test_panoptic_and_semantic_segmentation(cityscapes, tmp_path):
    """Panoptic training on Detectron2's Cityscapes records (contiguous ids without "isthing");
    PQ, and the Cityscapes IoU of the semantic output converted to the 19 trainIds."""
    cfg = _cfg(
        "panoptic_panet_R_50.yaml",
        str(tmp_path),
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        32,
        "INPUT.CROP.SIZE",
        (96, 192),
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        64,
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        0.0,
        "DATASETS.TEST",
        ("cityscapes_fine_panoptic_val", "cityscapes_fine_sem_seg_val"),
    )
    seed_all_rng(0)  # weights, crops and image order: unseeded, 2 iterations at times diverged
    trainer = PANetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    _check_metrics(results["cityscapes_fine_panoptic_val"], "panoptic_seg", PQ_KEYS)
    _check_metrics(results["cityscapes_fine_sem_seg_val"], "sem_seg", IOU_KEYS)


# ------------------------------------------------------------------------------------------------
# the label conversions, with a model that outputs the ground truth
# ------------------------------------------------------------------------------------------------
class _Oracle(torch.nn.Module):
    """
    Outputs the ground truth of cityscapes_fine_panoptic_val in PanopticPANet's convention
    (Panoptic FPN's "separated" ids: thing classes 0..7, semantic labels 0 = things, 1..11 stuff),
    converted by hand from the Cityscapes trainIds: "panoptic_seg" (a crowd region as one segment
    of its class, as a model that detects the group: PQ ignores it) and "sem_seg" (one-hot
    logits, 12 channels).
    """

    def __init__(self):
        super().__init__()
        records = DatasetCatalog.get("cityscapes_fine_panoptic_val")
        self.records = {r["file_name"]: r for r in records}

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            record = self.records[x["file_name"]]
            ids = panoptic_ids(record["pan_seg_file_name"])
            panoptic = torch.zeros(ids.shape, dtype=torch.int32)
            sem_seg = torch.zeros((NUM_STUFF + 1,) + ids.shape)
            segments = []
            for s in record["segments_info"]:
                mask = torch.from_numpy(ids == s["id"])
                train_id = s["category_id"]
                isthing = train_id >= NUM_STUFF
                sem_seg[0 if isthing else train_id + 1][mask] = 1.0
                category = train_id - NUM_STUFF if isthing else train_id + 1
                segment = {"id": len(segments) + 1, "category_id": category, "isthing": isthing}
                segments.append(segment)
                panoptic[mask] = len(segments)
            outputs.append({"panoptic_seg": (panoptic, segments), "sem_seg": sem_seg})
        return outputs


def _test_oracle(cityscapes, tmp_path, dataset):
    cfg = _cfg("panoptic_panet_R_50.yaml", str(tmp_path), "DATASETS.TEST", (dataset,))
    return PANetTrainer.test(cfg, _Oracle())


def test_oracle_panoptic_quality(cityscapes, tmp_path):
    """The project's panoptic evaluator converts the model's ids to Cityscapes': PQ 100."""
    results = _test_oracle(cityscapes, tmp_path, "cityscapes_fine_panoptic_val")["panoptic_seg"]
    for k in PQ_KEYS:
        assert results[k] == pytest.approx(100.0), (k, results)


def test_oracle_semantic_segmentation(cityscapes, tmp_path):
    """The model's semantic output, converted to the 19 trainIds (stuff channels; thing pixels'
    classes from the panoptic output) and evaluated by CityscapesSemSegEvaluator: IoU 100."""
    results = _test_oracle(cityscapes, tmp_path, "cityscapes_fine_sem_seg_val")["sem_seg"]
    assert results["IoU"] == pytest.approx(100.0), results


# ------------------------------------------------------------------------------------------------
# the ground truth that cityscapesscripts globs, checked before the run
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, config, suffix",
    [
        ("instance_seg", "panet_R_50_FPN.yaml", "instanceIds"),
        ("sem_seg", "panoptic_panet_R_50.yaml", "labelIds"),
    ],
)
def test_ground_truth_pngs_checked_before_the_run(cityscapes, tmp_path, task, config, suffix):
    """Each test image needs its ground-truth PNG, of its size, and no PNG may lack an image:
    cityscapesscripts scores the PNGs it finds, so a missing one removed an image from the score
    silently and one without an image failed after the run. ``gt_dir`` a copy, changed."""
    import shutil

    from panet_d2.engine.checks import check_inputs
    from panet_d2.errors import DatasetError

    original = f"cityscapes_fine_{task}_val"
    gt_dir = str(tmp_path / "gt")
    shutil.copytree(MetadataCatalog.get(original).gt_dir, gt_dir)
    name = f"test_cityscapes_gt_{task}"
    DatasetCatalog.register(name, lambda: DatasetCatalog.get(original))
    metadata = {**MetadataCatalog.get(original).as_dict(), "gt_dir": gt_dir}
    MetadataCatalog.get(name).set(**{k: v for k, v in metadata.items() if k != "name"})
    cfg = _cfg(config, str(tmp_path / "out"), "DATASETS.TEST", (name,))
    png = os.path.join(gt_dir, "frankfurt", f"frankfurt_000001_000508_gtFine_{suffix}.png")
    moved = str(tmp_path / "moved.png")
    try:
        check_inputs(cfg, train=False)  # the copy as shipped
        shutil.move(png, moved)
        with pytest.raises(DatasetError, match=r"000508_leftImg8bit.png' has no ground truth \(1 "):
            check_inputs(cfg, train=False)
        shutil.copy(moved, png.replace("000508", "000999"))  # and a PNG without an image
        shutil.copy(moved, png)
        with pytest.raises(DatasetError, match=r"000999_gtFine_\w+.png' has no image in the data"):
            check_inputs(cfg, train=False)
        os.remove(png.replace("000508", "000999"))
        Image.open(moved).resize((W // 2, H // 2)).save(png)  # another size
        with pytest.raises(DatasetError, match=rf"is {W // 2}x{H // 2} \(width x height\)"):
            check_inputs(cfg, train=False)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
