# -*- coding: utf-8 -*-
"""
Tests of the checks before a run (panet_d2.engine.checks.check_inputs, used by PANetTrainer and
train_net.py --eval-only): NUM_CLASSES against the datasets' classes, test-time augmentation
refused up front for the panoptic model, and the annotation rule on coordinates and RLE sizes.
Nothing here trains.
"""

import contextlib
import io
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from panet_d2.checkpoint import check_weights_file  # noqa: E402
from panet_d2.data import generate_synthetic_dataset  # noqa: E402
from panet_d2.data.image_io import read_image  # noqa: E402
from panet_d2.engine import PANetTrainer, uses_panoptic_mapper  # noqa: E402
from panet_d2.engine.checks import (  # noqa: E402
    check_class_order,
    check_dataset,
    check_expected_results,
    check_files,
    check_inputs,
    check_num_classes,
    check_panet_parts,
    check_panoptic_categories,
    check_tta,
    drop_invalid_annotations,
    drop_invalid_coco_annotations,
    loading_dataset,
)
from panet_d2.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DatasetError,
    ImageLoadError,
)

from ..common import ALL_OFF, ROOT, logged_messages, panet_cfg, register_coco  # noqa: E402

SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PANOPTIC = os.path.join(ROOT, "configs", "quick_schedules", "panoptic_panet_R_18_synth.yaml")


def _dataset(name, **metadata):
    """A registered dataset without records or files, with the given metadata."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**metadata)
    return name


# 3 thing classes and 3 stuff classes, in Detectron2's separated panoptic convention
INSTANCES = _dataset("t_checks_3_things", thing_classes=["a", "b", "c"], evaluator_type="coco")
PANOPTIC_DATASET = _dataset(
    "t_checks_panoptic",
    evaluator_type="coco_panoptic_seg",
    thing_classes=["a", "b", "c"],
    thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
    stuff_classes=["things", "x", "y", "z"],
    stuff_dataset_id_to_contiguous_id={0: 0, 4: 1, 5: 2, 6: 3},
)


def _main(train_net, tmp_path, config, *opts, eval_only=False):
    argv = ["--config-file", config] + (["--eval-only"] if eval_only else [])
    argv += ["OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"] + [str(o) for o in opts]
    return train_net.main(default_argument_parser().parse_args(argv))


def test_roi_heads_num_classes_against_dataset(train_net, tmp_path):
    expected = (
        "MODEL.ROI_HEADS.NUM_CLASSES=2 does not fit dataset 't_checks_3_things' ({}) with 3 thing "
        "classes: set MODEL.ROI_HEADS.NUM_CLASSES 3."
    )
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", 2, "DATASETS.TEST", "()"]
    with pytest.raises(ConfigError) as e:  # refused before anything is built
        _main(train_net, tmp_path, SMOKE, "DATASETS.TRAIN", "('t_checks_3_things',)", *opts)
    assert str(e.value) == expected.format("DATASETS.TRAIN")
    assert not os.path.exists(tmp_path / "model_final.pth")
    # a test set of more classes is evaluated as Detectron2 evaluates it (the model's are its
    # first ones), with a warning; one of fewer classes is refused (predictions of no category)
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", 4, "DATASETS.TEST", "('t_checks_3_things',)"]
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path, SMOKE, *opts, eval_only=True)
    assert str(e.value) == (
        "MODEL.ROI_HEADS.NUM_CLASSES=4 does not fit dataset 't_checks_3_things' (DATASETS.TEST) "
        "with 3 thing classes: set MODEL.ROI_HEADS.NUM_CLASSES 3."
    )
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    with logged_messages("panet_d2.engine.checks") as messages:
        check_num_classes(cfg, [("t_checks_3_things", "DATASETS.TEST")])
    assert messages == [
        "MODEL.ROI_HEADS.NUM_CLASSES=2, dataset 't_checks_3_things' (DATASETS.TEST) has 3 thing "
        "classes: the model predicts its first 2; 1 it does not (c) score AP 0 where annotated."
    ]


def test_sem_seg_head_num_classes_against_dataset(train_net, tmp_path):
    opts = ["DATASETS.TRAIN", "('t_checks_panoptic',)", "DATASETS.TEST", "()"]
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path, PANOPTIC, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3, *opts)
    assert str(e.value) == (
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES=3 does not fit dataset 't_checks_panoptic' "
        "(DATASETS.TRAIN) with 3 stuff classes + 1 (things): set MODEL.SEM_SEG_HEAD.NUM_CLASSES 4."
    )


@pytest.mark.parametrize(
    "dataset, things, sem_classes",
    [
        ("coco_2017_val", 80, None),
        ("coco_2017_val_panoptic_separated", 80, 54),
        ("coco_2017_val_panoptic", 80, 54),  # thing_classes lists all 133 classes there
        ("cityscapes_fine_panoptic_val", 8, 12),  # 19 trainIds: 8 things, 11 stuff
        ("cityscapes_fine_instance_seg_val", 8, None),
    ],
)
def test_num_classes_of_detectron2_datasets(dataset, things, sem_classes):
    # Detectron2's builtin metadata (no files needed): every convention of label ids
    cfg = panet_cfg("COCO-PanopticSegmentation/Base-Panoptic-PANet.yaml", small=False)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = things
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = sem_classes or 1
    check_num_classes(cfg, [(dataset, "DATASETS.TEST")])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = things + 1
    with pytest.raises(ConfigError, match="MODEL.ROI_HEADS.NUM_CLASSES {}".format(things)):
        check_num_classes(cfg, [(dataset, "DATASETS.TEST")])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = things
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 200
    if sem_classes is not None:
        with pytest.raises(ConfigError, match="SEM_SEG_HEAD.NUM_CLASSES {}".format(sem_classes)):
            check_num_classes(cfg, [(dataset, "DATASETS.TEST")])
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # an instance model has no semantic head
    check_num_classes(cfg, [(dataset, "DATASETS.TEST")])


def test_panoptic_tta_refused_before_training(train_net, tmp_path):
    expected = (
        "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's GeneralizedRCNNWithTTA) runs "
        "instance models (GeneralizedRCNN) only, not MODEL.META_ARCHITECTURE='PanopticPANet'. Set "
        "TEST.AUG.ENABLED False."
    )
    opts = ["TEST.AUG.ENABLED", True, "DATASETS.TRAIN", "('t_checks_panoptic',)"]
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path, PANOPTIC, *opts, "DATASETS.TEST", "()")
    assert str(e.value) == expected
    with open(tmp_path / "log.txt") as f:
        assert "Starting training" not in f.read()
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path, PANOPTIC, *opts, "DATASETS.TEST", "()", eval_only=True)
    assert str(e.value) == expected
    # also when called directly, before building anything
    cfg = panet_cfg(
        "quick_schedules/panoptic_panet_R_18_synth.yaml", opts=["TEST.AUG.ENABLED", True]
    )
    with pytest.raises(ConfigError, match="PanopticPANet"):
        PANetTrainer.test_with_TTA(cfg, model=None)
    # the instance model is fine
    check_tta(panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml", opts=opts[:2]))


def test_training_mapper_choice():
    panoptic = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    instance = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")
    records = [{"file_name": "a.png", "pan_seg_file_name": "a_panoptic.png"}]
    assert uses_panoptic_mapper(panoptic, records)
    assert not uses_panoptic_mapper(instance, records)
    assert not uses_panoptic_mapper(
        panoptic, [{"file_name": "a.png", "sem_seg_file_name": "s.png"}]
    )


def test_unusable_coordinates_and_rle_sizes_dropped(caplog):
    """Coordinates that are not finite or lie beyond 4x the image size, and RLE masks of another
    size than the image: dropped with the other invalid annotations, alike in training (dataset
    dicts) and evaluation (pycocotools ground truth), before pycocotools sees them (issue 25)."""
    nan, inf, poly = float("nan"), float("inf"), [1.0, 1.0, 8.0, 1.0, 8.0, 8.0]
    rle = mask_util.encode(np.asfortranarray(np.ones((40, 30), dtype=np.uint8)))
    rle = dict(rle, counts=rle["counts"].decode())

    def anno(i):
        return dict(id=i, image_id=1, bbox=[0, 0, 10, 10], category_id=1, segmentation=[poly])

    cases = [
        ("NaN", dict(segmentation=[poly[:3] + [nan] + poly[4:]])),
        ("1e8", dict(segmentation=[poly, poly[:3] + [1e8] + poly[4:]])),
        ("inf box", dict(bbox=[0, 0, inf, 10])),
        ("NaN box", dict(bbox=[nan, 0, 10, 10])),
        ("integer beyond a float", dict(segmentation=[[10**400] * 6])),
        ("text", dict(segmentation=[[1, 2, "x", 4, 5, 6]])),
        ("RLE of another size", dict(segmentation=dict(rle, size=[30, 40]))),
        ("within 4x", dict(segmentation=[poly[:3] + [-159.0] + poly[4:]])),  # 4 * 40
        ("RLE of the image's size", dict(segmentation=rle)),
    ]
    annos = [dict(anno(i), **change) for i, (_, change) in enumerate(cases)]
    kept = [a["id"] for a in annos[-2:]]
    record = dict(file_name="a.jpg", image_id=1, height=40, width=30, annotations=annos)
    reasons = (
        "6 with a coordinate not finite or beyond 4x the image size, 1 with an RLE mask of "
        "another size than its image"
    )
    with caplog.at_level(logging.WARNING, logger="panet_d2.engine.checks"):
        records = drop_invalid_annotations([record], ["t_checks_coco"], "DATASETS.TRAIN", True)
    assert [a["id"] for a in records[0]["annotations"]] == kept
    assert f"dropped 7 of 9 annotations ({reasons}); the first: image 1 ('a.jpg')" in caplog.text
    coco = COCO()
    coco.dataset = dict(images=[dict(id=1, height=40, width=30, file_name="a.jpg")])
    coco.dataset.update(annotations=annos, categories=[dict(id=1, name="a")])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panet_d2.engine.checks"):
        assert drop_invalid_coco_annotations(coco, "t_checks_coco", masks=True) == 7
    assert sorted(coco.anns) == kept
    assert f"dropped 7 of 9 annotations ({reasons}); the first: annotation 0 of image 1" in (
        caplog.text
    )
    for a in coco.anns.values():
        assert mask_util.decode(coco.annToRLE(a)).shape == (40, 30)
    # where the image size is unknown, only numbers that are not finite (or not numbers) go
    del record["height"], record["width"]
    records = drop_invalid_annotations([record], ["t_checks_coco"], "DATASETS.TRAIN", True)
    assert [a["id"] for a in records[0]["annotations"]] == [1, 6, 7, 8]


def test_damaged_rle_masks_dropped():
    """An RLE mask whose runs do not make its height x width (pycocotools decodes uninitialised
    memory where they fall short, fails where they go beyond or the string ends mid-number) is
    dropped alike in training and evaluation; RLEs as pycocotools writes them (compressed, as
    bytes or text, and uncompressed lists as COCO's crowd masks) are kept and decode."""
    mask = np.zeros((40, 30), dtype=np.uint8)
    mask[5:30, 3:20], mask[1::4, ::3] = 1, 1  # (pixel 0 background: COCO's runs start with it)
    rle = mask_util.encode(np.asfortranarray(mask))
    text = rle["counts"].decode()
    runs = [
        int(n) for n in np.diff(np.flatnonzero(np.diff(mask.T.reshape(-1), prepend=2, append=2)))
    ]
    assert mask[0, 0] == 0 and sum(runs) == 40 * 30
    valid = [rle["counts"], text, runs]
    damaged = [
        text[:-1],
        text + "1",
        text + "P",
        text[:5] + "!" + text[6:],
        runs[:-1],
        runs + [3],
        [-1, 1201],
    ]
    damaged += [runs[:-2] + [runs[-2] + 1.0, runs[-1] - 1.0], None, 3]
    segms = [dict(size=[40, 30], counts=c) for c in valid + damaged]
    annos = [
        dict(id=i, image_id=1, bbox=[0, 0, 10, 10], category_id=1, segmentation=s)
        for i, s in enumerate(segms)
    ]
    record = dict(file_name="a.jpg", image_id=1, height=40, width=30, annotations=annos)
    records = drop_invalid_annotations([record], ["t_checks_rle"], "DATASETS.TRAIN", True)
    kept = [a["id"] for a in records[0]["annotations"]]
    assert kept == [0, 1, 2]
    for a in records[0]["annotations"]:
        segm = a["segmentation"]
        if isinstance(segm["counts"], list):
            segm = mask_util.frPyObjects(segm, *segm["size"])
        np.testing.assert_array_equal(mask_util.decode(segm), mask)
    coco = COCO()
    coco.dataset = dict(images=[dict(id=1, height=40, width=30, file_name="a.jpg")])
    coco.dataset.update(annotations=annos, categories=[dict(id=1, name="a")])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    assert drop_invalid_coco_annotations(coco, "t_checks_rle", masks=True) == len(damaged)
    assert sorted(coco.anns) == kept


def test_panet_parts_allow_subclasses_and_detectron2s_parts_with_the_keys_off():
    """The keys of AFP, FF and the box head's fc norm are refused only where their part is absent
    (tests/engine/test_bad_inputs.py): a registered subclass of the part, or the keys off, pass."""
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from panet_d2.modeling import PANetROIHeads

    check_panet_parts(panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml"))  # PANet
    mask_rcnn = ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_BOX_HEAD.NAME"]
    mask_rcnn += ["FastRCNNConvFCHead", "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    check_panet_parts(
        panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml", opts=ALL_OFF + mask_rcnn)
    )
    no_mask = ["MODEL.MASK_ON", False, "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    check_panet_parts(panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml", opts=no_mask))

    class SubclassedPANetROIHeads(PANetROIHeads):
        pass

    ROI_HEADS_REGISTRY.register(SubclassedPANetROIHeads)
    try:
        cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")
        cfg.MODEL.ROI_HEADS.NAME = "SubclassedPANetROIHeads"
        check_panet_parts(cfg)
    finally:
        ROI_HEADS_REGISTRY._obj_map.pop("SubclassedPANetROIHeads")


def test_missing_dataset_file_names_the_folder_a_relative_path_is_read_in(tmp_path, monkeypatch):
    """A relative path is read in the working folder: the message names it, and where Detectron2's
    builtin datasets are looked for; an absolute path needs neither."""
    monkeypatch.chdir(tmp_path)
    register_coco("t_relative_missing", os.path.join("datasets", "a.json"), "datasets")
    with pytest.raises(DatasetError) as e:
        check_dataset("t_relative_missing", "DATASETS.TEST")
    assert str(e.value) == (
        "The json_file 'datasets/a.json' of dataset 't_relative_missing' (DATASETS.TEST) does not "
        f"exist in {str(tmp_path)!r} (Detectron2's builtin datasets: in $DETECTRON2_DATASETS)."
    )
    register_coco("t_absolute_missing", str(tmp_path / "a.json"), str(tmp_path))
    with pytest.raises(DatasetError) as e:
        check_dataset("t_absolute_missing", "DATASETS.TEST")
    assert str(e.value).endswith(
        f"{str(tmp_path / 'a.json')!r} of dataset 't_absolute_missing' "
        "(DATASETS.TEST) does not exist."
    )
    for name in ("t_relative_missing", "t_absolute_missing"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_failed_load_is_one_sentence():
    # Detectron2's own messages end with a full stop ("No valid data found in x."): one, not two
    with pytest.raises(DatasetError) as e:
        with loading_dataset(["t_no_files"], "DATASETS.TRAIN"):
            raise AssertionError("No valid data found in t_no_files.")
    assert str(e.value) == (
        "Cannot load dataset 't_no_files' (DATASETS.TRAIN): AssertionError: No valid data found "
        "in t_no_files."
    )


def _coco_copy(tmp_path, name, change):
    """A copy of a generated split's instances json, ``change(data)`` applied, registered."""
    paths = generate_synthetic_dataset(str(tmp_path / "synth"), "gt", 2, seed=1, image_size=64)
    with open(paths["instances_json"]) as f:
        data = json.load(f)
    change(data)
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(data))
    return register_coco(name, json_file, paths["image_root"]), data


def test_coco_ground_truth_that_evaluation_cannot_score_refused_up_front(tmp_path, caplog):
    """COCO evaluation reads each ground-truth annotation's area and iscrowd (KeyError after the
    whole inference when absent) and takes annotation id 0 as "unmatched" (a silently lower AP);
    areas beyond pycocotools' [0, 1e10] fall out of every size range: refused before the run,
    naming the annotation; a generated (valid) json and its copy pass."""
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")

    def without(key):
        return lambda d: d["annotations"][1].pop(key)

    def setting(key, value, index=1):
        return lambda d: d["annotations"][index].update({key: value})

    cases = [
        (without("area"), "has no area"),
        (without("iscrowd"), "has no iscrowd"),
        (setting("id", 0), "has the id 0"),
        (setting("id", -3), "has the id -3"),
        (setting("id", "7"), "has the id '7'"),
        (setting("area", float("nan")), "has the area nan"),
        (setting("area", 1e12), "has the area 1000000000000.0"),
        (setting("area", -5), "has the area -5"),
        (setting("area", "big"), "has the area 'big'"),
    ]
    for i, (change, what) in enumerate(cases):
        name, data = _coco_copy(tmp_path, f"t_gt_{i}", change)
        anno = data["annotations"][1]
        cfg.DATASETS.TEST = (name,)
        with pytest.raises(DatasetError) as e:
            check_inputs(cfg, train=False)
        expected = f"annotation {anno.get('id')!r} of image {anno['image_id']!r} {what} (1 such"
        assert expected in str(e.value), what
    name, _ = _coco_copy(tmp_path, "t_gt_valid", lambda d: None)
    cfg.DATASETS.TEST = (name,)
    check_inputs(cfg, train=False)
    # no annotation at all: AP nan, said; no "annotations" key: predictions only, as Detectron2
    name, _ = _coco_copy(tmp_path, "t_gt_none", lambda d: d.update(annotations=[]))
    cfg.DATASETS.TEST = (name,)
    caplog.clear()
    check_inputs(cfg, train=False)
    assert "t_gt_none.json' has no annotations: its AP will be nan" in caplog.text
    name, _ = _coco_copy(tmp_path, "t_gt_unannotated", lambda d: d.pop("annotations"))
    cfg.DATASETS.TEST = (name,)
    caplog.clear()
    check_inputs(cfg, train=False)
    assert "has no annotations" not in caplog.text


def test_duplicate_category_ids_named(tmp_path):
    """A json listing a category id twice (Detectron2 maps it once: 4 class names, 3 ids) is named
    as such, not met with the advice to set NUM_CLASSES 4."""

    def duplicate(data):
        data["categories"].append(dict(data["categories"][1], name="disk2"))

    name, _ = _coco_copy(tmp_path, "t_dup_cat", duplicate)
    with loading_dataset([name], "DATASETS.TEST"):
        DatasetCatalog.get(name)
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")
    with pytest.raises(DatasetError, match=r"lists 4 thing categories with 3 ids \(\[1, 2, 3\]\)"):
        check_num_classes(cfg, [(name, "DATASETS.TEST")])


def test_annotation_without_bbox_dropped():
    """An annotation without a bbox (Detectron2's mapper: KeyError at the training iteration that
    reads it; pycocotools: after inference) is dropped with the other invalid ones."""
    poly = [[1.0, 1.0, 8.0, 1.0, 8.0, 8.0]]
    annos = [dict(id=1, category_id=1, segmentation=poly), dict(id=2, bbox=[1, 1, 7, 7])]
    annos[1].update(category_id=1, segmentation=poly)
    record = dict(file_name="a.jpg", image_id=1, height=40, width=30, annotations=annos)
    records = drop_invalid_annotations([record], ["t_no_bbox"], "DATASETS.TRAIN", True)
    assert [a["id"] for a in records[0]["annotations"]] == [2]


def test_pipes_are_not_regular_files(tmp_path):
    """A named pipe as a dataset's json_file, an image or a checkpoint is refused as not a regular
    file (opening it would wait for a writer forever), not as missing."""
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    register_coco("t_pipe", fifo, str(tmp_path))
    with pytest.raises(
        DatasetError, match=r"The json_file '.*pipe' of dataset 't_pipe'.* is not a"
    ):
        check_dataset("t_pipe", "DATASETS.TEST")
    with pytest.raises(ImageLoadError, match=r"^--sample-image '.*pipe' is not a regular file"):
        read_image(fifo, format="BGR", what="--sample-image")
    with pytest.raises(CheckpointError, match=r"^Checkpoint '.*pipe' is not a regular file"):
        check_weights_file(fifo, "MODEL.WEIGHTS")


def test_load_proposals_without_proposal_files_refused():
    """MODEL.LOAD_PROPOSALS reads a proposal file per dataset (Detectron2: an IndexError when the
    test loader is built, an AssertionError for training)."""
    opts = ["MODEL.LOAD_PROPOSALS", True, "DATASETS.TEST", ("panet_synth_val",)]
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml", opts=opts)
    with pytest.raises(ConfigError, match=r"^MODEL.LOAD_PROPOSALS=True reads one proposal file"):
        check_inputs(cfg, train=False)


def test_test_classes_in_another_order_refused(tmp_path):
    """A test set listing the training set's class names under other category ids (the model's
    class k scored as the test set's class k: box AP 38.8 -> 8.2 in the fuzz review, exit 0) is
    refused once both are loaded; the same order, or other classes, pass."""

    def swapped(data):
        names = {1: 2, 2: 1}  # square <-> disk, annotations relabelled alike
        for c in data["categories"]:
            c["id"] = names.get(c["id"], c["id"])
        for a in data["annotations"]:
            a["category_id"] = names.get(a["category_id"], a["category_id"])

    def renamed(data):
        data["categories"][0]["name"] = "box"

    train, _ = _coco_copy(tmp_path, "t_order_train", lambda d: None)
    names = [_coco_copy(tmp_path, f"t_order_{f.__name__}", f)[0] for f in (swapped, renamed)]
    same, _ = _coco_copy(tmp_path, "t_order_same", lambda d: None)
    for name in [train, same] + names:
        DatasetCatalog.get(name)  # (sets the thing classes)
    assert MetadataCatalog.get(names[0]).thing_classes[:2] == ["disk", "square"]
    with pytest.raises(DatasetError, match=r"'t_order_swapped' .* in another order"):
        check_class_order([train], [same, names[0]])
    check_class_order([train], [same, names[1]])
    check_class_order(["t_order_unloaded"], [names[0]])
    # a training run: the training set's classes known once its loader is built, before step 1
    train, _ = _coco_copy(tmp_path, "t_order_train", lambda d: None)  # (registered anew)
    opts = ["DATASETS.TRAIN", (train,), "DATASETS.TEST", (names[0],), "OUTPUT_DIR", str(tmp_path)]
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml", opts=opts)
    assert MetadataCatalog.get(train).get("thing_classes", None) is None
    with pytest.raises(DatasetError, match=r"'t_order_swapped' .* in another order"):
        PANetTrainer(cfg)


def test_semantic_label_pngs_checked_before_the_run(tmp_path):
    """A semantic label PNG rendered in color (SemSegEvaluator: a broadcast ValueError after the
    inference; training: its gray levels as class ids), a palette one in a training set (read as
    gray levels, not its indices) or one of another size is refused, headers read; an 8-bit
    gray one passes, and a palette one in an evaluation set (read as its indices)."""
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(image)

    def record(mode, size=(30, 20)):
        path = tmp_path / f"label_{mode}_{size[0]}.png"
        Image.new(mode, size).save(path)
        return dict(file_name=str(image), sem_seg_file_name=str(path), width=30, height=20)

    check_files([record("L")], "t_sem", "DATASETS.TRAIN")
    check_files([record("P")], "t_sem", "DATASETS.TEST")
    for rec, key, match in [
        (record("RGB"), "DATASETS.TEST", r"is of mode 'RGB': label PNGs hold one 8-bit class id"),
        (record("P"), "DATASETS.TRAIN", r"mode 'P'.*training would read its colors' gray levels"),
        (record("L", (31, 20)), "DATASETS.TEST", r"is 31x20 \(width x height\), its image"),
    ]:
        with pytest.raises(DatasetError, match=match):
            check_files([rec], "t_sem", key)


def test_expected_results_checked(train_net, tmp_path, monkeypatch):
    """TEST.EXPECTED_RESULTS (Detectron2's verify_results: [task, metric, value, tolerance]):
    malformed entries, a task the test dataset's evaluator does not give for this model (a
    KeyError after the run), and DATASETS.TEST empty or of two datasets (results by dataset) are
    refused up front; after an --eval-only run, a task its evaluation did not give is named with
    those it gave."""
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")  # a "coco" test set
    assert MetadataCatalog.get(cfg.DATASETS.TEST[0]).evaluator_type == "coco"
    good = [["bbox", "AP", 38.5, 0.2], ("segm", "AP50", 1, 0)]
    cfg.TEST.EXPECTED_RESULTS = good
    check_expected_results(cfg)
    check_expected_results(cfg, {"bbox": {}, "segm": {}})
    for entry in [["bbox", "AP", 38.5], ["bbox", "AP", "38", 0.2], ["bbox", 1, 38.5, 0.2]]:
        cfg.TEST.EXPECTED_RESULTS = [entry]
        with pytest.raises(ConfigError, match=r"^TEST.EXPECTED_RESULTS entry .*: must be \[task"):
            check_expected_results(cfg)
    for entry in [
        ["bbox", "AP", 38.5, -1],
        ["bbox", "AP", float("nan"), 1],
        ["bbox", "AP", 1, True],
    ]:
        cfg.TEST.EXPECTED_RESULTS = [entry]
        with pytest.raises(ConfigError, match=r"must be \[task, metric, expected value, tol"):
            check_expected_results(cfg)
    # COCOEvaluator's tasks of a mask model without keypoints: bbox, segm
    for task in ("bbx", "keypoints", "panoptic_seg", "bbox_TTA"):
        cfg.TEST.EXPECTED_RESULTS = [[task, "AP", 38.5, 0.2]]
        with pytest.raises(
            ConfigError, match=rf"names the task '{task}': .* gives 'bbox', 'segm'\."
        ):
            check_inputs(cfg, train=False) if task == "bbx" else check_expected_results(cfg)
    cfg.MODEL.MASK_ON = False
    cfg.TEST.EXPECTED_RESULTS = [["segm", "AP", 38.5, 0.2]]
    with pytest.raises(ConfigError, match=r"names the task 'segm': .* gives 'bbox'\."):
        check_expected_results(cfg)
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.EXPECTED_RESULTS = [["bbox_TTA", "AP", 38.5, 0.2]]
    check_expected_results(cfg)
    for tests in [(), (cfg.DATASETS.TEST[0],) * 2]:
        cfg.DATASETS.TEST = tests
        with pytest.raises(ConfigError, match=r"^TEST.EXPECTED_RESULTS is set, DATASETS.TEST="):
            check_expected_results(cfg)
    # after the run: a task of the evaluator's table that this evaluation did not give
    from panet_d2.engine import checks

    monkeypatch.setitem(checks.TASKS, "coco", checks.TASKS["coco"] + ("extra",))
    weights = str(tmp_path / "weights.pth")  # the smoke config's model, as initialised
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    opts = ["TEST.EXPECTED_RESULTS", "[['extra', 'AP', 1.0, 0.5]]", "MODEL.WEIGHTS", weights]
    opts += ["DATASETS.TEST", "('panet_synth_val',)", "TEST.DETECTIONS_PER_IMAGE", 5]
    with pytest.raises(ConfigError, match=r"'extra': .* gives 'bbox', 'segm'\.$"):
        _main(train_net, tmp_path, SMOKE, *opts, eval_only=True)


def test_detectron2s_own_configs_pass_the_checks():
    """Detectron2's C4 configs (Res5ROIHeads reads no ROI_BOX_HEAD.NAME, '' by default) and a
    rotated-box R-CNN (5 box regression weights) pass check_config as they build in Detectron2
    (PANet's parts off: MODEL.AFP and MODEL.FF are read by PANet's heads only)."""
    from detectron2 import model_zoo as d2_zoo

    from panet_d2.config import load_config_file
    from panet_d2.engine.checks import check_config

    off = ["MODEL.AFP.ENABLED", False, "MODEL.FF.ENABLED", False]
    for name in [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
        "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    ]:
        check_config(load_config_file(d2_zoo.get_config_file(name), off, lazy=False), train=False)
    rotated = off + ["MODEL.PROPOSAL_GENERATOR.NAME", "RRPN", "MODEL.ROI_HEADS.NAME", "RROIHeads"]
    rotated += ["MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator", "MODEL.MASK_ON", False]
    rotated += ["MODEL.ANCHOR_GENERATOR.ANGLES", [[-90, 0, 90]]]
    rotated += ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignRotated", "MODEL.DEVICE", "cpu"]
    rotated += ["MODEL.RPN.BBOX_REG_WEIGHTS", (1, 1, 1, 1, 1)]
    rotated += ["MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", (10, 10, 5, 5, 1)]
    name = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    cfg = load_config_file(d2_zoo.get_config_file(name), rotated, lazy=False)
    check_config(cfg, train=False)
    assert type(build_model(cfg).roi_heads).__name__ == "RROIHeads"  # (it builds, as it should)


def test_panoptic_segment_of_an_unknown_category(shared_data, tmp_path):
    """A test set's segment whose category_id is not among the panoptic json's categories: one
    line before loading. panopticapi scores it silently: perfect predictions score PQ < 100."""
    from panopticapi.evaluation import pq_compute

    sample = os.path.join(shared_data, "coco_panoptic_sample")
    pngs = os.path.join(sample, "panoptic")
    with open(os.path.join(sample, "panoptic_val2017_sample.json")) as f:
        good = json.load(f)
    bad = json.loads(json.dumps(good))
    segment = bad["annotations"][0]["segments_info"][0]
    segment["category_id"] = 9999
    files = {}
    for name, data in (("good", good), ("bad", bad)):
        files[name] = str(tmp_path / f"{name}.json")
        with open(files[name], "w") as f:
            json.dump(data, f)
    with contextlib.redirect_stdout(io.StringIO()):
        pq = {n: pq_compute(files[n], files["good"], pngs, pngs)["All"]["pq"] for n in files}
    assert pq["good"] == 1.0 and pq["bad"] < 1.0  # the harm: the perfect prediction's PQ drops
    name = _dataset(
        "t_checks_unknown_category", evaluator_type="coco_panoptic_seg", panoptic_json=files["bad"]
    )
    with pytest.raises(DatasetError) as e:
        check_panoptic_categories(name)
    assert str(e.value) == (
        f"Dataset {name!r} (DATASETS.TEST) from {files['bad']!r}: segment {segment['id']!r} of "
        f"image {bad['annotations'][0]['image_id']!r} has the category_id 9999, which is not among "
        "its categories (1 such segment(s)): panopticapi would skip it and count a prediction on "
        "it as a false positive. Fix the id, or add the category."
    )
    cfg = panet_cfg(PANOPTIC)  # checked with the test set, before it is loaded
    cfg.DATASETS.TEST = (name,)
    with pytest.raises(DatasetError, match="has the category_id 9999, which is not among"):
        check_inputs(cfg, train=False)
    check_panoptic_categories(
        _dataset(
            "t_checks_known_category",
            evaluator_type="coco_panoptic_seg",
            panoptic_json=files["good"],
        )
    )


def test_every_detectron2_model_zoo_config_passes_check_config():
    """Every yacs config of Detectron2's model zoo (PanopticFPN, semantic, RetinaNet, keypoint,
    Cascade, DC5, C4, LVIS, Cityscapes, ...) passes check_config as it builds in Detectron2 (the
    RetinaNet ones, whose base file holds a Python eval tag, are refused as data: their line)."""
    import glob

    from detectron2 import model_zoo as d2_zoo

    from panet_d2.config import load_config_file
    from panet_d2.engine.checks import check_config

    root = os.path.join(os.path.dirname(d2_zoo.__file__), "configs")
    files = sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))
    off = ["MODEL.AFP.ENABLED", False, "MODEL.FF.ENABLED", False, "MODEL.DEVICE", "cpu"]
    refused = []
    for path in files:
        try:
            check_config(load_config_file(path, off, lazy=False), train=True)
        except ConfigError as e:
            assert "Python tag" in str(e) and "Base-RetinaNet.yaml" in str(e), (path, str(e))
            refused.append(os.path.basename(path))
    assert len(files) >= 80 and len(refused) <= 6, refused


def test_detectron2_projects_configs_pass_check_config():
    """Detectron2's projects as their base configs set them: PointRend (no mask pooler, "": its
    head reads the features), DeepLabV3+ (a ResNet that pads to nothing, a head that resizes),
    and a dilated res5 in a pyramid without res4 (strides 4, 8, 16: Detectron2 builds it)."""
    from detectron2 import model_zoo as d2_zoo
    from detectron2.projects import deeplab, point_rend

    from panet_d2 import add_panet_config
    from panet_d2.engine.checks import check_config

    def config(name, add, opts):
        cfg = get_cfg()
        add_panet_config(cfg)
        add(cfg)
        cfg.merge_from_file(d2_zoo.get_config_file(name))
        cfg.merge_from_list(["MODEL.AFP.ENABLED", False, "MODEL.FF.ENABLED", False] + opts)
        return cfg

    fpn = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    point = ["MODEL.ROI_MASK_HEAD.POOLER_TYPE", "", "MODEL.ROI_MASK_HEAD.NAME"]
    point += ["PointRendMaskHead", "MODEL.ROI_MASK_HEAD.IN_FEATURES", ["p2"]]
    point += ["MODEL.ROI_MASK_HEAD.FC_DIM", 1024, "MODEL.ROI_MASK_HEAD.NUM_FC", 2]
    point += ["MODEL.ROI_MASK_HEAD.OUTPUT_SIDE_RESOLUTION", 7, "MODEL.POINT_HEAD.IN_FEATURES"]
    point += [["p2"], "INPUT.MASK_FORMAT", "bitmask"]
    deeplab_v3plus = ["MODEL.META_ARCHITECTURE", "SemanticSegmentor", "MODEL.BACKBONE.NAME"]
    deeplab_v3plus += ["build_resnet_deeplab_backbone", "MODEL.RESNETS.NORM", "SyncBN"]
    deeplab_v3plus += ["MODEL.RESNETS.OUT_FEATURES", ["res2", "res5"], "MODEL.RESNETS.STEM_TYPE"]
    deeplab_v3plus += ["deeplab", "MODEL.RESNETS.STEM_OUT_CHANNELS", 128]
    deeplab_v3plus += ["MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4], "MODEL.SEM_SEG_HEAD.NAME"]
    deeplab_v3plus += ["DeepLabV3PlusHead", "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]]
    deeplab_v3plus += ["MODEL.SEM_SEG_HEAD.PROJECT_FEATURES", ["res2"], "MODEL.SEM_SEG_HEAD.NORM"]
    deeplab_v3plus += ["SyncBN", "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", [48]]
    deeplab_v3plus += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 19, "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 4]
    dilated = ["MODEL.RESNETS.RES5_DILATION", 2, "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res5"]]
    dilated += ["MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4"], "MODEL.RPN.IN_FEATURES"]
    dilated += [
        ["p2", "p3", "p4", "p5"],
        "MODEL.ANCHOR_GENERATOR.SIZES",
        [[32], [64], [128], [256]],
    ]
    cases = [
        (fpn, point_rend.add_pointrend_config, point),
        ("Base-RCNN-DilatedC5.yaml", deeplab.add_deeplab_config, deeplab_v3plus),
        (fpn, lambda cfg: None, dilated),
        (  # Detectron2's semantic FPN head on a ResNet that pads to nothing: not this check's
            "Base-RCNN-DilatedC5.yaml",
            lambda cfg: None,
            ["MODEL.META_ARCHITECTURE", "SemanticSegmentor", "MODEL.RESNETS.RES5_DILATION", 1]
            + ["MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]]
            + ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res4", "res5"]],
        ),
    ]
    for name, add, opts in cases:
        cfg = config(name, add, opts + ["MODEL.DEVICE", "cpu"])
        for train in (True, False):
            check_config(cfg, train=train)
        build_model(cfg)  # (Detectron2 builds each)
