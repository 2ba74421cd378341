# -*- coding: utf-8 -*-
"""
The checks of a run before it starts (solver values, the output folder, datasets, class counts,
TTA, what Detectron2's own modules leave unchecked), the annotation filters of training and
evaluation, and the one-line logging of an :class:`~panet_d2.errors.InputError`. Each check has
one home: config files are checked as they load (:func:`panet_d2.config.load_config_file`), the
model's own keys by its constructors (:mod:`panet_d2.modeling.validation`).
"""

import contextlib
import difflib
import inspect
import io
import logging
import math
import os
import tempfile
from collections import Counter

import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import GeneralizedRCNN, PanopticFPN, build_backbone
from detectron2.structures import BoxMode

from ..compat import cityscapes_api_alias
from ..data import label_space_of
from ..errors import ConfigError, DatasetError, ImageLoadError, InputError
from ..evaluation import (
    SEM_SEG_TYPES,
    check_evaluator_type,
    meta_architecture,
    panoptic_to_dataset_classes,
)
from ..modeling.validation import check_in_features

__all__ = [
    "check_registered",
    "check_dataset_files",
    "check_files",
    "check_num_classes",
    "check_tta",
    "check_output_dir",
    "check_config",
    "drop_invalid_annotations",
    "drop_invalid_coco_annotations",
    "check_inputs",
    "loading_dataset",
    "clean_error_message",
    "OneLineInputErrors",
]

logger = logging.getLogger(__name__)


# Metadata keys that name a dataset's files or folders (Detectron2's builtin registrations).
_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")
_PATH_KEYS += ("image_dir", "gt_dir")  # Cityscapes


def _local(path):
    return isinstance(path, str) and bool(path) and "://" not in path


def check_registered(name, key):
    """Raises :class:`DatasetError` if dataset ``name`` (of config ``key``) is not registered."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
        hint = " Did you mean: {}?".format(", ".join(map(repr, close))) if close else ""
        raise DatasetError(
            "Dataset {!r} in {} is not registered.{} Register it (e.g. with Detectron2's "
            "register_coco_instances) in a module that train_net.py imports, or fix {}.".format(
                name, key, hint, key
            )
        )


def check_dataset_files(name, key):
    """Raises :class:`DatasetError` if a file or folder of ``name``'s metadata does not exist."""
    meta = MetadataCatalog.get(name)
    for k in _PATH_KEYS:
        path = meta.get(k, None)
        if _local(path) and not os.path.exists(path):
            raise DatasetError(
                "The {} {!r} of dataset {!r} ({}) does not exist.".format(k, path, name, key)
            )


def check_files(dicts, name, key):
    """
    Raises :class:`DatasetError` (missing folder) or :class:`ImageLoadError` naming the first
    image or segmentation PNG of the records ``dicts`` (of dataset(s) ``name``, config ``key``)
    that does not exist, and how many more are missing.
    """
    paths = (
        d.get(k) for d in dicts for k in ("file_name", "sem_seg_file_name", "pan_seg_file_name")
    )
    missing = [p for p in paths if _local(p) and not os.path.isfile(p)]
    if not missing:
        return
    what = "of dataset {!r} ({}) does not exist".format(name, key)
    more = " ({} files missing in all)".format(len(missing)) if len(missing) > 1 else ""
    if not os.path.isdir(os.path.dirname(missing[0])):
        raise DatasetError("The folder {!r} {}{}.".format(os.path.dirname(missing[0]), what, more))
    raise ImageLoadError("The file {!r} {}{}.".format(missing[0], what, more))


@contextlib.contextmanager
def loading_dataset(names, key):
    """Raises what fails inside the block (loading ``names``) as :class:`DatasetError`; Detectron2's
    Cityscapes loaders import there (:func:`~panet_d2.compat.cityscapes_api_alias`)."""
    try:
        with cityscapes_api_alias():
            yield
    except InputError:
        raise
    except Exception as e:
        metas = [MetadataCatalog.get(n) for n in names]
        files = ["{}={!r}".format(k, m.get(k)) for m in metas for k in _PATH_KEYS if m.get(k, "")]
        raise DatasetError(
            "Cannot load dataset {} ({}): {}: {}.{}".format(
                ", ".join(map(repr, names)),
                key,
                type(e).__name__,
                e,
                " Its files: " + ", ".join(files) + "." if files else "",
            )
        ) from e


def _num_things(meta):
    """(number, what) of a dataset's thing classes, or None; a panoptic dataset's thing_classes
    may list every class (coco_2017_*_panoptic, cityscapes_fine_panoptic_*)."""
    space, classes = label_space_of(meta), meta.get("thing_classes", None)
    num = space.num_things if space is not None else len(classes) if classes else None
    return None if num is None else (num, "{} thing classes".format(num))


def _num_sem_classes(meta):
    """(number, what) of a panoptic dataset's semantic classes: stuff + 1 ("things"), or None."""
    space = label_space_of(meta)
    if space is None:
        return None
    return space.num_sem_classes, "{} stuff classes + 1 (things)".format(space.num_stuff)


def check_num_classes(cfg, datasets):
    """
    Checks MODEL.ROI_HEADS.NUM_CLASSES against the thing classes, and for a Panoptic FPN model
    (PanopticPANet) MODEL.SEM_SEG_HEAD.NUM_CLASSES against the stuff classes + 1, of every
    dataset in ``datasets`` (pairs of name and config key) whose metadata has them.

    Raises:
        ConfigError: naming the key, its value, the dataset and the right value.
    """
    arch = meta_architecture(cfg)
    if not (isinstance(arch, type) and issubclass(arch, GeneralizedRCNN)):
        return
    checks = [("ROI_HEADS", _num_things)]
    if issubclass(arch, PanopticFPN):
        checks.append(("SEM_SEG_HEAD", _num_sem_classes))
    for name, key in datasets:
        for head, classes_of in checks:
            cfg_key, value = "MODEL.{}.NUM_CLASSES".format(head), cfg.MODEL[head].NUM_CLASSES
            classes = classes_of(MetadataCatalog.get(name))
            if classes is not None and value != classes[0]:
                raise ConfigError(
                    "{}={} does not fit dataset {!r} ({}) with {}: set {} {}.".format(
                        cfg_key, value, name, key, classes[1], cfg_key, classes[0]
                    )
                )


def check_tta(cfg):
    """
    Raises :class:`ConfigError` if TEST.AUG.ENABLED is set for a model that Detectron2's
    ``GeneralizedRCNNWithTTA`` cannot run: it needs a GeneralizedRCNN whose ``inference`` takes
    ``detected_instances`` (PanopticFPN / PanopticPANet do not).
    """
    arch = meta_architecture(cfg)
    if not cfg.TEST.AUG.ENABLED or arch is None:
        return
    if not (
        isinstance(arch, type)
        and issubclass(arch, GeneralizedRCNN)
        and "detected_instances" in inspect.signature(arch.inference).parameters
    ):
        raise ConfigError(
            "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's GeneralizedRCNNWithTTA) "
            "runs instance models (GeneralizedRCNN) only, not MODEL.META_ARCHITECTURE={!r}. Set "
            "TEST.AUG.ENABLED False.".format(cfg.MODEL.META_ARCHITECTURE)
        )


def check_output_dir(path, key="OUTPUT_DIR"):
    """
    Creates the folder ``path`` (config ``key``) if missing and checks that a file can be written
    there (a local path; other storages are not checked).

    Raises:
        ConfigError: naming the key and the path, when it is a file, cannot be created or is not
            writable.
    """
    if not _local(path):
        return
    what = "{}={!r}".format(key, path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("{} is a file: give a folder (created if missing).".format(what))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            "{} cannot be created: {}. Give a writable folder.".format(what, e.strerror or e)
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".panet_d2_write_test_", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            "{} is not writable: {}. Give a writable folder.".format(what, e.strerror or e)
        ) from None


def _backbone_shapes(cfg):
    """{feature name: ShapeSpec} of the backbone of ``cfg``, built on the meta device (no memory,
    no draw from the random generators); None if it cannot be built (build_model then says why)."""
    try:
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
            return build_backbone(cfg).output_shape()
    except Exception:
        return None


def check_config(cfg, train=True, world_size=None):
    """
    Checks config values that Detectron2 would only reject deep inside building or training:
    MODEL.ROI_HEADS.NUM_CLASSES positive; SOLVER.BASE_LR, MOMENTUM and WEIGHT_DECAY not negative
    and SOLVER.IMS_PER_BATCH a positive multiple of the number of processes (``world_size``,
    default the current one; when ``train``); the features of Detectron2's RPN among the
    backbone's. (The project's backbone and heads check their own arguments when built:
    :mod:`panet_d2.modeling.validation`.)

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    arch = meta_architecture(cfg)
    rcnn = isinstance(arch, type) and issubclass(arch, GeneralizedRCNN)
    value = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if rcnn and (not isinstance(value, int) or value < 1):
        raise ConfigError(
            "MODEL.ROI_HEADS.NUM_CLASSES={!r}: must be a positive integer, the dataset's number "
            "of thing classes.".format(value)
        )
    if train:
        for k in ("BASE_LR", "MOMENTUM", "WEIGHT_DECAY"):
            if cfg.SOLVER[k] < 0:
                raise ConfigError("SOLVER.{}={!r}: must be 0 or positive.".format(k, cfg.SOLVER[k]))
        steps = [s for s in cfg.SOLVER.STEPS if s <= cfg.SOLVER.MAX_ITER]  # as Detectron2's
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and (
            cfg.SOLVER.MAX_ITER in steps or steps != sorted(set(steps)) or min(steps, default=1) < 1
        ):
            raise ConfigError(
                "SOLVER.STEPS={}: the iterations where the LR drops must be increasing, from 1 "
                "to less than SOLVER.MAX_ITER={}.".format(cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER)
            )
        if cfg.SOLVER.BASE_LR == 0:
            logger.warning("SOLVER.BASE_LR=0: training will not change the weights.")
        world_size = world_size or comm.get_world_size()
        batch = cfg.SOLVER.IMS_PER_BATCH
        if batch < 1 or batch % world_size:
            raise ConfigError(
                "SOLVER.IMS_PER_BATCH={}: the images per iteration of all processes together "
                "must be a positive multiple of the number of processes ({}).".format(
                    batch, world_size
                )
            )
    # Detectron2's RPN takes its features unchecked (a KeyError deep in building it); the
    # project's ROI and semantic heads check theirs when built
    shapes = _backbone_shapes(cfg) if rcnn else None
    if shapes is not None and cfg.MODEL.PROPOSAL_GENERATOR.NAME in ("RPN", "RRPN"):
        backbone = "the backbone " + cfg.MODEL.BACKBONE.NAME
        check_in_features("MODEL.RPN.IN_FEATURES", cfg.MODEL.RPN.IN_FEATURES, shapes, backbone)


# Annotation validity, the same for training (dataset dicts) and evaluation (COCO ground truth):
# a polygon with fewer than 6 coordinates or of odd length is dropped (as Detectron2's
# load_coco_json does); an annotation is dropped when none of its polygons is left (as
# load_coco_json), when its segmentation is missing or an empty list while masks are used, when
# its box has no area, when a coordinate of its box or polygons is not a finite number or lies
# farther than _FAR image sizes from the image (pycocotools, rasterising it, grows to gigabytes or
# crashes), or when its RLE mask has another size than its image (an AssertionError in the mapper).
_FAR = 4
_REASONS = {
    "polygons": "without a valid polygon",
    "empty": "with an empty or no segmentation (MODEL.MASK_ON)",
    "box": "with a box of non-positive size",
    "coordinates": "with a coordinate not finite or beyond {}x the image size".format(_FAR),
    "rle": "with an RLE mask of another size than its image",
}


def _far_or_not_finite(values, bound):
    """Whether a box or polygon (numbers) has a value that is not finite or is beyond ``bound``
    from 0."""
    try:
        finite = math.isfinite(sum(values))  # NaN, inf, or values that overflow when added
        return bool(values) and not (finite and -bound <= min(values) and max(values) <= bound)
    except (TypeError, OverflowError):  # not numbers, or integers beyond a float
        return True


def _rle_size_differs(segm, size):
    """Whether an RLE mask (a dict) has another size than ``size`` (h, w), where known."""
    if not isinstance(segm, dict) or not size:
        return False
    try:
        return [int(n) for n in segm.get("size")] != [int(size[0]), int(size[1])]
    except (TypeError, ValueError, OverflowError):  # no size, or not numbers
        return True


def _annotation_problem(box_xyxy, segm, masks, size=None):
    """(reason or None, the valid polygons or None, number of invalid polygons); ``size`` is the
    image's (h, w), or None where unknown."""
    polygons, dropped = None, 0
    bound = _FAR * max(size) if size else math.inf
    lines = [box_xyxy] + (segm if isinstance(segm, list) else [])
    if any(_far_or_not_finite(v, bound) for v in lines if v is not None):
        return "coordinates", polygons, dropped
    if _rle_size_differs(segm, size):
        return "rle", polygons, dropped
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]
        dropped = len(segm) - len(polygons)
        if segm and not polygons:
            return "polygons", polygons, dropped
    if masks and (segm is None or isinstance(segm, list) and not segm):
        return "empty", polygons, dropped
    if box_xyxy is not None and (box_xyxy[2] <= box_xyxy[0] or box_xyxy[3] <= box_xyxy[1]):
        return "box", polygons, dropped
    return None, polygons, dropped


def _log_dropped(where, counts, total, polygons, first, then):
    if not counts and not polygons:
        return
    msg = "{}: dropped {} of {} annotations".format(where, sum(counts.values()), total)
    if counts:
        msg += " ({})".format(", ".join("{} {}".format(n, _REASONS[r]) for r, n in counts.items()))
    if polygons:
        msg += " and {} polygon(s) with fewer than 6 coordinates or of odd length".format(polygons)
    logger.warning("{}; the first: {}. {}".format(msg, first, then))


def _record_box(a):
    box, mode = a.get("bbox"), a.get("bbox_mode", BoxMode.XYWH_ABS)
    if box is not None and mode in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
        return BoxMode.convert(list(box), mode, BoxMode.XYXY_ABS)
    return None


def _coco_box(a):
    box = a.get("bbox")
    return BoxMode.convert(list(box), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) if box else None


def _image_size(record):
    """(h, w) of an image record (a dataset dict, or a COCO image), or None where unknown."""
    size = (record or {}).get("height"), (record or {}).get("width")
    ok = all(isinstance(n, (int, float)) and math.isfinite(n) and n > 0 for n in size)
    return size if ok else None


def _valid_annotations(annos, box_of, masks, describe, size_of):
    """
    ``annos`` without the invalid ones (``_annotation_problem``; ``size_of(a)``: the image size
    of annotation ``a``), invalid polygons removed (such annotations copied): (kept, Counter of
    reasons, polygons removed, ``describe(a)`` of the first annotation with a problem or None).
    """
    kept, counts, polygons, first = [], Counter(), 0, None
    for a in annos:
        reason, valid, dropped = _annotation_problem(
            box_of(a), a.get("segmentation"), masks, size_of(a)
        )
        if reason is not None or dropped:
            first = first or describe(a)
        if reason is not None:
            counts[reason] += 1
        else:
            polygons += dropped
            kept.append(dict(a, segmentation=valid) if dropped else a)
    return kept, counts, polygons, first


def drop_invalid_annotations(dicts, names, key, masks):
    """
    The dataset dicts ``dicts`` (of datasets ``names``, config ``key``) without the invalid
    annotations and polygons (see ``_annotation_problem``), logged with a count. The dicts that
    change are copies.

    Raises:
        DatasetError: when every annotation is dropped (e.g. none has a mask while ``masks``).
    """
    out, counts, total, polygons, first = [], Counter(), 0, 0, None
    for d in dicts:
        annos = d.get("annotations")
        if not annos:
            out.append(d)
            continue
        image = "image {!r} ({!r})".format(d.get("image_id"), d.get("file_name"))
        size = _image_size(d)
        kept, c, p, f = _valid_annotations(
            annos, _record_box, masks, lambda a: image, lambda a: size
        )
        counts, polygons, first, total = counts + c, polygons + p, first or f, total + len(annos)
        out.append(dict(d, annotations=kept) if (c or p) else d)
    what = "Dataset{} {} ({})".format("s" * (len(names) > 1), ", ".join(map(repr, names)), key)
    files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
    files = [f for f in files if f]
    where = what + (" from {}".format(", ".join(map(repr, files))) if files else "")
    if total and sum(counts.values()) == total:
        raise DatasetError(
            "{}: all {} annotations are invalid: {}.{}".format(
                where,
                total,
                ", ".join("{} {}".format(n, _REASONS[r]) for r, n in counts.items()),
                (
                    " A model with MODEL.MASK_ON needs a segmentation in every annotation."
                    if counts.get("empty")
                    else ""
                ),
            )
        )
    _log_dropped(where, counts, total, polygons, first, "Evaluation drops the same ones.")
    return out


def drop_invalid_coco_annotations(coco_api, name, masks):
    """
    Drops the invalid annotations and polygons (see ``_annotation_problem``) from the ground
    truth of a pycocotools ``COCO`` object (an evaluator's, of dataset ``name``; pycocotools fails
    on them after a whole inference), as training drops them; logged with a count.

    Returns:
        int: the number of annotations dropped.
    """
    annos = coco_api.dataset.get("annotations", [])
    describe = "annotation {!r} of image {!r}".format
    images = getattr(coco_api, "imgs", {})
    kept, counts, polygons, first = _valid_annotations(
        annos,
        _coco_box,
        masks,
        lambda a: describe(a.get("id"), a.get("image_id")),
        lambda a: _image_size(images.get(a.get("image_id"))),
    )
    if len(kept) != len(annos) or polygons:
        coco_api.dataset["annotations"] = kept
        with contextlib.redirect_stdout(io.StringIO()):
            coco_api.createIndex()
        file = MetadataCatalog.get(name).get("json_file", None)
        where = "Dataset {!r} (evaluation ground truth{})".format(
            name, " from {!r}".format(file) if file else ""
        )
        _log_dropped(where, counts, len(annos), polygons, first, "Training drops the same ones.")
    return len(annos) - len(kept)


def check_inputs(cfg, train=True):
    """
    The checks before a training (``train``) or evaluation run, each failing with one line that
    names the dataset, key, file or value: the config values (:func:`check_config`); the
    datasets of DATASETS.TRAIN (when ``train``) and DATASETS.TEST are registered and their
    files exist; the test datasets have a supported
    evaluator_type and load, with all their image files; NUM_CLASSES fits every dataset
    (:func:`check_num_classes`); TEST.AUG.ENABLED only with a model that TTA runs.
    """
    check_config(cfg, train=train)
    datasets = [(name, "DATASETS.TEST") for name in cfg.DATASETS.TEST]
    if train:
        if not len(cfg.DATASETS.TRAIN):
            raise DatasetError("DATASETS.TRAIN is empty: nothing to train on.")
        datasets = [(name, "DATASETS.TRAIN") for name in cfg.DATASETS.TRAIN] + datasets
    for name, key in datasets:
        check_registered(name, key)
        check_dataset_files(name, key)
    for name in cfg.DATASETS.TEST:
        check_evaluator_type(name)
        with loading_dataset([name], "DATASETS.TEST"):
            check_files(DatasetCatalog.get(name), name, "DATASETS.TEST")
    check_num_classes(cfg, datasets)
    # a panoptic model's semantic output must convert to each semantic test dataset's classes
    for name in cfg.DATASETS.TEST:
        if MetadataCatalog.get(name).get("evaluator_type", None) in SEM_SEG_TYPES:
            panoptic_to_dataset_classes(cfg, name)
    check_tta(cfg)


def clean_error_message(e):
    """
    The message of an exception, without the traceback that PyTorch's DataLoader puts into the
    message of an exception raised in a worker process.
    """
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1]
        prefix = "{}.{}: ".format(type(e).__module__, type(e).__name__)
        msg = last[len(prefix) :] if last.startswith(prefix) else last
    return msg


class OneLineInputErrors(logging.Filter):
    """
    A filter for Detectron2's "detectron2.engine.train_loop" logger: an :class:`InputError` or a
    ``FloatingPointError`` (divergence) that stops training ("Exception during training:") is
    logged as one line, without the traceback.
    """

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (InputError, FloatingPointError)):
            record.msg = "{} {}: {}".format(
                record.getMessage(), type(exc).__name__, " ".join(clean_error_message(exc).split())
            )
            record.args, record.exc_info, record.exc_text = (), None, None
        return True
