"""The checks of the data and run values before a run, and the annotation rule."""

import contextlib
import difflib
import functools
import glob
import inspect
import io
import json
import logging
import math
import numbers
import os
import tempfile
from collections import Counter

import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.modeling import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    RPN_HEAD_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    build_backbone,
)
from detectron2.modeling import roi_heads as d2_roi_heads
from detectron2.modeling.meta_arch.panoptic_fpn import PanopticFPN
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN, ProposalNetwork
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.meta_arch.semantic_seg import SemanticSegmentor, SemSegFPNHead
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..compat import cityscapes_api_alias
from ..data import label_space_of
from ..data.image_io import (
    MAX_SIDE,
    check_ground_truth_png,
    check_image_size,
    check_panoptic_png,
    check_sem_seg_png,
)
from ..errors import (
    INPUT_CHANNELS,
    MAX_POOLER_RESOLUTION,
    ConfigError,
    DatasetError,
    ImageLoadError,
    InputError,
    check_choice,
    check_fractions,
    check_in_features,
    check_norm,
    raised_in_libraries,
)
from ..evaluation.build import SEM_SEG_TYPES, TASKS, check_evaluator_type
from ..evaluation.panoptic import meta_architecture, panoptic_to_dataset_classes
from ..modeling import PANetConvFCHead, PANetMaskHead, PANetROIHeads

logger = logging.getLogger(__name__)
# the pooler types of Detectron2's ROIPooler
POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool", "ROIAlignRotated")

# Metadata keys that name a dataset's files or folders (Detectron2's builtin ones, Cityscapes')
_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")
_PATH_KEYS += ("image_dir", "gt_dir")


def _local(path):
    return isinstance(path, str) and bool(path) and "://" not in path


def _rcnn(cfg):
    arch = meta_architecture(cfg)
    return arch if isinstance(arch, type) and issubclass(arch, GeneralizedRCNN) else None


def check_registered(name, key):
    """Raises :class:`DatasetError` if dataset ``name`` (of config ``key``) is not registered."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(map(repr, close))}?" if close else ""
        raise DatasetError(
            f"Dataset {name!r} in {key} is not registered.{hint} Register it (e.g. with Detectron2"
            f"'s register_coco_instances) in a module that the script imports (train_net.py, "
            f"tools/*.py: before their main), or fix {key}."
        )


def check_dataset(name, key):
    """Raises :class:`DatasetError` if dataset ``name`` (of config ``key``) is not registered or
    a file or folder of its metadata (json_file, image_root, ...) does not exist."""
    check_registered(name, key)
    meta = MetadataCatalog.get(name)
    for k in _PATH_KEYS:
        path = meta.get(k, None)
        if _local(path) and not os.path.exists(path):
            tip = f" in {os.getcwd()!r} (Detectron2's builtin datasets: in $DETECTRON2_DATASETS)"
            tip = "" if os.path.isabs(path) else tip
            raise DatasetError(f"The {k} {path!r} of dataset {name!r} ({key}) does not exist{tip}.")
        folder = k.endswith(("_root", "_dir"))  # a pipe would hang the loader
        if _local(path) and not (os.path.isdir if folder else os.path.isfile)(path):
            what = "a folder" if folder else "a regular file"
            raise DatasetError(f"The {k} {path!r} of dataset {name!r} ({key}) is not {what}.")


def check_files(dicts, name, key):
    """Raises :class:`DatasetError` (a folder) or :class:`ImageLoadError` for the first missing
    file of records ``dicts`` (of ``name``, ``key``), then checks image sizes and label PNGs."""
    keys = ("file_name", "sem_seg_file_name", "pan_seg_file_name")
    missing = [d[k] for d in dicts for k in keys if _local(d.get(k)) and not os.path.isfile(d[k])]
    if missing:
        what = f"of dataset {name!r} ({key}) " + (
            "is not a regular file" if os.path.exists(missing[0]) else "does not exist"
        )
        what += f" ({len(missing)} files missing in all)." if len(missing) > 1 else "."
        if not os.path.isdir(os.path.dirname(missing[0])):
            raise DatasetError(f"The folder {os.path.dirname(missing[0])!r} {what}")
        raise ImageLoadError(f"The file {missing[0]!r} {what}")
    for d in dicts:  # 0.1 ms an image (docs/reliability.md)
        if _local(d.get("file_name")) and ("width" in d or "height" in d):
            check_image_size(d)
        if _local(d.get("pan_seg_file_name")):
            check_panoptic_png(d, evaluation=key == "DATASETS.TEST")
        if _local(d.get("sem_seg_file_name")):
            check_sem_seg_png(d, evaluation=key == "DATASETS.TEST")


@contextlib.contextmanager
def loading_dataset(names, key):
    """Raises what fails in the block (loading ``names``) as one :class:`DatasetError`."""
    try:
        with cityscapes_api_alias():
            yield
    except InputError:
        raise
    except Exception as e:
        metas = [MetadataCatalog.get(n) for n in names]
        files = [f"{k}={m.get(k)!r}" for m in metas for k in _PATH_KEYS if m.get(k, "")]
        files = f" Its files: {', '.join(files)}." if files else ""
        raise DatasetError(
            f"Cannot load dataset {', '.join(map(repr, names))} ({key}): {type(e).__name__}: "
            f"{str(e).rstrip('.')}.{files}"
        ) from e


def check_num_classes(cfg, datasets):
    """Raises :class:`ConfigError` if a NUM_CLASSES does not fit one of ``datasets`` (name, key)."""
    arch = _rcnn(cfg)
    if arch is None:
        return
    for name, key in datasets:
        meta = MetadataCatalog.get(name)
        space, things = label_space_of(meta), meta.get("thing_classes", None)
        num = space.num_things if space is not None else len(things) if things else None
        ids = meta.get("thing_dataset_id_to_contiguous_id", None)
        if space is None and things and ids is not None and len(ids) != len(things):
            raise DatasetError(  # Detectron2's load_coco_json maps a duplicated id once
                f"Dataset {name!r} ({key}) lists {len(things)} thing categories with "
                f"{len(ids)} ids ({sorted(ids)}): a category id appears twice; give each its own."
            )
        classes = [("ROI_HEADS", num, f"{num} thing classes")]
        if space is not None and issubclass(arch, PanopticFPN):
            stuff = f"{space.num_stuff} stuff classes + 1 (things)"
            classes.append(("SEM_SEG_HEAD", space.num_sem_classes, stuff))
        for head, num, what in classes:
            cfg_key, value = f"MODEL.{head}.NUM_CLASSES", cfg.MODEL[head].NUM_CLASSES
            if key == "DATASETS.TEST" and head == "ROI_HEADS" and num and value < num:
                unknown = (things or space.thing_classes)[value:]  # as Detectron2 evaluates it
                logger.warning(
                    f"{cfg_key}={value}, dataset {name!r} ({key}) has {what}: the model predicts "
                    f"its first {value}; {len(unknown)} it does not ({', '.join(unknown[:5])}"
                    f"{', ...' if len(unknown) > 5 else ''}) score AP 0 where annotated."
                )
                continue
            if num is not None and value != num:
                raise ConfigError(
                    f"{cfg_key}={value} does not fit dataset {name!r} ({key}) with {what}: "
                    f"set {cfg_key} {num}."
                )


def check_training_targets(cfg, dicts, name):
    """Raises :class:`DatasetError` if a training record (of ``dicts``, datasets ``name``) lacks
    what the model trains on: instance annotations (R-CNNs, RetinaNet, the RPN alone) or a
    semantic label PNG (semantic and panoptic models); records that panet_d2's panoptic mapper
    reads have both (their PNG). Detectron2: an error at the first step, or later."""
    arch = meta_architecture(cfg)
    if not isinstance(arch, type):
        return
    needs = []
    if issubclass(arch, (GeneralizedRCNN, RetinaNet, ProposalNetwork)):
        needs.append(("annotations", "instance annotations ('annotations')"))
    if issubclass(arch, (SemanticSegmentor, PanopticFPN)):
        needs.append(("sem_seg_file_name", "semantic label PNG ('sem_seg_file_name')"))
    for key, what in needs:
        missing = [d for d in dicts if key not in d]
        if not missing:
            continue
        hint = "Train on a dataset registered with them."
        if "pan_seg_file_name" in missing[0]:
            hint = (
                "Its records are panoptic (a PNG and segments_info): PanopticPANet trains on them "
                "as they are; other models need the dataset registered with its instances json "
                "and semantic PNGs (register_coco_panoptic_panet, or Detectron2's "
                "register_coco_panoptic_separated)."
            )
        raise DatasetError(
            f"{len(missing)} of the {len(dicts)} training records ({name}, DATASETS.TRAIN) have "
            f"no {what}, which {cfg.MODEL.META_ARCHITECTURE} trains on (the first: "
            f"{missing[0].get('file_name')!r}). {hint}"
        )


def check_class_order(train_names, test_names):
    """Raises :class:`DatasetError` if a dataset of ``test_names`` lists the thing classes of one
    of ``train_names`` in another order (the model's class k is scored as the test set's k: AP
    collapses, silently); datasets whose classes are not known yet (not loaded) are passed."""
    classes = {n: MetadataCatalog.get(n).get("thing_classes", None) for n in train_names}
    for name in test_names:
        test = MetadataCatalog.get(name).get("thing_classes", None)
        for train, ref in classes.items():
            if test and ref and list(test) != list(ref) and sorted(test) == sorted(ref):
                raise DatasetError(
                    f"Dataset {name!r} (DATASETS.TEST) lists the thing classes of {train!r} "
                    f"(DATASETS.TRAIN) in another order ({list(test)[:4]} against "
                    f"{list(ref)[:4]}): the model's class k would be scored as its class k. "
                    "Give both the same category ids."
                )


def check_tta(cfg):
    """Raises :class:`ConfigError` if TEST.AUG.ENABLED is set for a model TTA cannot run."""
    if not cfg.TEST.AUG.ENABLED or meta_architecture(cfg) is None:
        return
    arch = _rcnn(cfg)
    if arch is None or "detected_instances" not in inspect.signature(arch.inference).parameters:
        raise ConfigError(
            "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's GeneralizedRCNNWithTTA) "
            "runs instance models (GeneralizedRCNN) only, not "
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}. Set TEST.AUG.ENABLED False."
        )


def check_output_dir(path, key="OUTPUT_DIR"):
    """Creates the local folder ``path`` (config ``key``); :class:`ConfigError` if not writable."""
    if path == "":
        raise ConfigError(f"{key} is empty: give a folder (created if missing).")
    if not _local(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}={path!r} is a file: give a folder (created if missing).")
    try:
        failed = "cannot be created"
        os.makedirs(path, exist_ok=True)
        failed = "is not writable"
        fd, probe = tempfile.mkstemp(prefix=".panet_d2_write_test_", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        msg = f"{key}={path!r} {failed}: {e.strerror or e}. Give a writable folder."
        raise ConfigError(msg) from None


def check_registered_names(cfg):
    """Raises :class:`ConfigError` for a registry name of ``cfg`` (META_ARCHITECTURE, the parts
    its model builds) that is not registered (Detectron2: a ``KeyError`` traceback)."""
    m, arch = cfg.MODEL, meta_architecture(cfg)
    keys = [
        ("META_ARCHITECTURE", META_ARCH_REGISTRY),
        ("BACKBONE.NAME", BACKBONE_REGISTRY),
    ]
    if isinstance(arch, type) and issubclass(arch, GeneralizedRCNN):
        keys += [("ROI_HEADS.NAME", d2_roi_heads.ROI_HEADS_REGISTRY)]
        heads = d2_roi_heads.ROI_HEADS_REGISTRY
        heads = heads.get(m.ROI_HEADS.NAME) if m.ROI_HEADS.NAME in heads else None
        if isinstance(heads, type) and issubclass(heads, d2_roi_heads.StandardROIHeads):
            keys += [("ROI_BOX_HEAD.NAME", d2_roi_heads.ROI_BOX_HEAD_REGISTRY)]  # (not Res5's)
        keys += [("ROI_MASK_HEAD.NAME", d2_roi_heads.ROI_MASK_HEAD_REGISTRY)] * m.MASK_ON
        if m.PROPOSAL_GENERATOR.NAME != "PrecomputedProposals":  # (Detectron2's special name)
            keys += [("PROPOSAL_GENERATOR.NAME", PROPOSAL_GENERATOR_REGISTRY)]
        if m.PROPOSAL_GENERATOR.NAME in ("RPN", "RRPN"):
            keys += [("RPN.HEAD_NAME", RPN_HEAD_REGISTRY)]
            keys += [("ANCHOR_GENERATOR.NAME", ANCHOR_GENERATOR_REGISTRY)]
    if isinstance(arch, type) and issubclass(arch, PanopticFPN):
        keys += [("SEM_SEG_HEAD.NAME", SEM_SEG_HEADS_REGISTRY)]
    for key, registry in keys:
        name = functools.reduce(getattr, key.split("."), m)
        if name not in registry:
            names = sorted(n for n, _ in registry)
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"MODEL.{key}={name!r} is not in Detectron2's {registry._name} registry: {hint}"
                f"registered: {', '.join(names)} (a module that registers another must be imported "
                "first)."
            )


def check_panet_parts(cfg):
    """Raises :class:`ConfigError` for a PANet key that is on while the part that reads it is not
    in the R-CNN model of ``cfg`` (a key that would do nothing, or fail in the first step)."""
    m = cfg.MODEL
    for on, key, node, part in [
        (m.AFP.ENABLED, "MODEL.AFP.ENABLED", "ROI_HEADS", PANetROIHeads),
        (m.FF.ENABLED and m.MASK_ON, "MODEL.FF.ENABLED", "ROI_MASK_HEAD", PANetMaskHead),
        (m.ROI_BOX_HEAD.FC_NORM, "MODEL.ROI_BOX_HEAD.FC_NORM", "ROI_BOX_HEAD", PANetConvFCHead),
    ]:
        registry, name = getattr(d2_roi_heads, node + "_REGISTRY"), m[node].NAME
        built = registry.get(name) if name in registry else None
        if on and _rcnn(cfg) and not (isinstance(built, type) and issubclass(built, part)):
            raise ConfigError(
                f"{key}={on!r} is read by {part.__name__} only, got MODEL.{node}.NAME={name!r}: "
                f"set the name to {part.__name__!r} or {key} to {False if on is True else ''!r}."
            )


_MEMORY = "larger values exhaust a machine's memory"


def _value(cfg, key):
    return functools.reduce(lambda node, name: node[name], key.split("."), cfg)


def _require(ok, key, value, what):
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be {what}.")


def _check_counts(cfg, train):
    """The integer keys read, {key: (lowest value, what it counts, highest value or None)}."""
    m, rcnn = cfg.MODEL, _rcnn(cfg)
    counts = {"DATALOADER.NUM_WORKERS": (0, "loader processes; 0: none", None)}
    counts["INPUT.MIN_SIZE_TEST"] = (0, "test images' short side; 0: not resized", MAX_SIDE)
    counts["INPUT.MAX_SIZE_TEST"] = (1, "test images' long side", MAX_SIDE)
    counts["TEST.DETECTIONS_PER_IMAGE"] = (1, "detections kept per image", None)
    counts["MODEL.RPN.PRE_NMS_TOPK_TEST"] = (1, "proposals per level before the RPN's NMS", None)
    counts["MODEL.RPN.POST_NMS_TOPK_TEST"] = (1, "proposals kept after the RPN's NMS", None)
    if cfg.TEST.AUG.ENABLED:
        counts["TEST.AUG.MIN_SIZES"] = (1, "short sides of test-time augmentation", MAX_SIDE)
        counts["TEST.AUG.MAX_SIZE"] = (1, "long side of test-time augmentation", MAX_SIDE)
    if rcnn:
        counts["MODEL.BACKBONE.FREEZE_AT"] = (0, "stages frozen; ResNet has 5", 5)
        counts["MODEL.FPN.OUT_CHANNELS"] = (1, "the pyramid's channels", None)
        heads = [("ROI_BOX_HEAD", "box")] + [("ROI_MASK_HEAD", "mask")] * m.MASK_ON
        for node, head in heads:
            what = f"the side of the {head} head's RoI features"
            counts[f"MODEL.{node}.POOLER_RESOLUTION"] = (1, what, MAX_POOLER_RESOLUTION)
            counts[f"MODEL.{node}.NUM_CONV"] = (0, f"the {head} head's convolutions", None)
            if m[node].NUM_CONV > 0 or head == "mask":
                counts[f"MODEL.{node}.CONV_DIM"] = (1, f"the {head} head's channels", None)
        counts["MODEL.ROI_BOX_HEAD.NUM_FC"] = (0, "the box head's fc layers", None)
        if m.ROI_BOX_HEAD.NUM_FC > 0:
            counts["MODEL.ROI_BOX_HEAD.FC_DIM"] = (1, "the box head's fc width", None)
        if issubclass(rcnn, PanopticFPN):
            counts["MODEL.SEM_SEG_HEAD.CONVS_DIM"] = (1, "the semantic head's channels", None)
    if train:
        counts["MODEL.RPN.BATCH_SIZE_PER_IMAGE"] = (1, "anchors sampled per image", None)
        counts["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] = (1, "RoIs sampled per image", None)
        counts["SOLVER.MAX_ITER"] = (1, "training iterations", None)
        counts["SOLVER.WARMUP_ITERS"] = (0, "iterations of the LR's warmup", None)
        counts["SOLVER.CHECKPOINT_PERIOD"] = (1, "iterations between checkpoints", None)
        counts["TEST.EVAL_PERIOD"] = (0, "iterations between evaluations; 0: at the end", None)
        counts["INPUT.MIN_SIZE_TRAIN"] = (1, "training images' short sides", MAX_SIDE)
        counts["INPUT.MAX_SIZE_TRAIN"] = (1, "training images' long side", MAX_SIDE)
    for key, (low, what, high) in counts.items():
        value = _value(cfg, key)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < low]
        kind = "integers" if isinstance(value, (list, tuple)) else "an integer"
        _require(values and not bad, key, value, f"{kind} >= {low} ({what})")
        why = f": {_MEMORY}" if high in (MAX_SIDE, MAX_POOLER_RESOLUTION) else ""
        _require(high is None or max(values) <= high, key, value, f"{kind} <= {high} ({what}){why}")


def _check_training(cfg, world_size):
    """The solver's values, the crop's size for its type, and the smooth L1 betas."""
    solver = cfg.SOLVER
    for k in ("BASE_LR", "MOMENTUM", "WEIGHT_DECAY", "GAMMA"):  # NaN fails too
        _require(0 <= solver[k] < math.inf, f"SOLVER.{k}", solver[k], "0 or positive, and finite")
    nesterov = "positive with SOLVER.NESTEROV True (torch's SGD: Nesterov momentum needs one)"
    _require(
        solver.MOMENTUM > 0 or not solver.NESTEROV, "SOLVER.MOMENTUM", solver.MOMENTUM, nesterov
    )
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and not (0 < clip.CLIP_VALUE < math.inf and 0 < clip.NORM_TYPE):
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={clip.CLIP_VALUE!r}, NORM_TYPE={clip.NORM_TYPE!r}: "
            "must be positive (the value is finite; at -1 every gradient would be set to -1)."
        )
    steps = [s for s in solver.STEPS if s <= solver.MAX_ITER]  # as Detectron2's
    bad = solver.MAX_ITER in steps or steps != sorted(set(steps)) or min(steps, default=1) < 1
    if solver.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and bad:
        raise ConfigError(
            f"SOLVER.STEPS={solver.STEPS}: the iterations where the LR drops must be "
            f"increasing, from 1 to less than SOLVER.MAX_ITER={solver.MAX_ITER}."
        )
    if solver.BASE_LR == 0:
        logger.warning("SOLVER.BASE_LR=0: training will not change the weights.")
    if solver.IMS_PER_BATCH < 1 or solver.IMS_PER_BATCH % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={solver.IMS_PER_BATCH}: the images per iteration of all "
            "processes together must be a positive multiple of the number of processes "
            f"({world_size})."
        )
    crop = cfg.INPUT.CROP
    relative, size = crop.TYPE.startswith("relative"), list(crop.SIZE)
    if relative:
        ok = all(isinstance(v, (int, float)) and 0 < v <= 1 for v in size)
    else:
        ok = all(isinstance(v, int) and v >= 1 for v in size)
        ok = ok and (crop.TYPE != "absolute_range" or size == sorted(size))
    if crop.ENABLED and not (len(size) == 2 and ok):
        what = "of the image, in (0, 1]" if relative else "in pixels >= 1 (a range: increasing)"
        raise ConfigError(
            f"INPUT.CROP.SIZE={crop.SIZE!r}: with INPUT.CROP.TYPE {crop.TYPE!r}, a height and a "
            f"width {what}."
        )
    for key in ("MODEL.RPN.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA"):
        _require(0 <= _value(cfg, key) < math.inf, key, _value(cfg, key), "0 (L1 loss) or positive")


def _check_model_values(cfg, rcnn):
    """The ResNet, anchors and panoptic merge keys that Detectron2 reads unchecked."""
    m = cfg.MODEL
    if "resnet" in m.BACKBONE.NAME:
        r = m.RESNETS
        check_choice("MODEL.RESNETS.DEPTH", r.DEPTH, (18, 34, 50, 101, 152))
        check_choice("MODEL.RESNETS.RES5_DILATION", r.RES5_DILATION, (1, 2))
        check_norm("MODEL.RESNETS.NORM", r.NORM)
        other = r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE) or r.RES2_OUT_CHANNELS != 64
        if r.DEPTH in (18, 34) and other:  # Detectron2's assertions in build_resnet_backbone
            raise ConfigError(
                f"MODEL.RESNETS.DEPTH={r.DEPTH} (BasicBlocks) takes RES5_DILATION 1, no "
                f"DEFORM_ON_PER_STAGE and RES2_OUT_CHANNELS 64; got {r.RES5_DILATION}, "
                f"{list(r.DEFORM_ON_PER_STAGE)} and {r.RES2_OUT_CHANNELS}."
            )
        pyramid = m.FPN.IN_FEATURES if "fpn" in m.BACKBONE.NAME else ()
        if r.RES5_DILATION != 1 and "res4" in pyramid and "res5" in pyramid:
            raise ConfigError(  # Detectron2's FPN: "Strides 16 16 are not log2 contiguous"
                f"MODEL.RESNETS.RES5_DILATION={r.RES5_DILATION} keeps res5 at res4's stride (16): "
                f"a feature pyramid ({m.BACKBONE.NAME}) cannot take both (MODEL.FPN.IN_FEATURES="
                f"{list(pyramid)}). Set it 1, or leave res4 or res5 out of the pyramid."
            )
    anchors = m.ANCHOR_GENERATOR
    values = [v for key in ("SIZES", "ASPECT_RATIOS") for row in anchors[key] for v in row]
    if rcnn and not all(0 < v < math.inf for v in values):
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.SIZES={anchors.SIZES}, ASPECT_RATIOS={anchors.ASPECT_RATIOS}: "
            "must be positive finite numbers."
        )
    for key in ("MODEL.RPN.BBOX_REG_WEIGHTS", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"):
        weights = _value(cfg, key)  # Box2BoxTransform divides the deltas by them
        ok = len(weights) in (4, 5) and all(0 < w < math.inf for w in weights)
        what = "4 positive finite numbers (x, y, w, h; rotated boxes: 5, and the angle)"
        _require(not rcnn or ok, key, tuple(weights), what)
    if rcnn and issubclass(rcnn, PanopticFPN) and not m.MASK_ON:
        raise ConfigError(
            f"MODEL.MASK_ON=False: {m.META_ARCHITECTURE}'s panoptic merge reads the instance "
            "masks: set it True."
        )
    heads = d2_roi_heads.ROI_HEADS_REGISTRY.get(m.ROI_HEADS.NAME) if rcnn else None
    standard = isinstance(heads, type) and issubclass(heads, d2_roi_heads.StandardROIHeads)
    if standard or isinstance(heads, type) and issubclass(heads, d2_roi_heads.Res5ROIHeads):
        check_choice("MODEL.ROI_BOX_HEAD.POOLER_TYPE", m.ROI_BOX_HEAD.POOLER_TYPE, POOLER_TYPES)
    if standard and m.MASK_ON:  # "": no pooling, the mask head reads the features (PointRend)
        check_choice(
            "MODEL.ROI_MASK_HEAD.POOLER_TYPE", m.ROI_MASK_HEAD.POOLER_TYPE, POOLER_TYPES + ("",)
        )
    if rcnn and issubclass(rcnn, PanopticFPN) and not m.PANOPTIC_FPN.COMBINE.ENABLED:
        raise ConfigError(
            "MODEL.PANOPTIC_FPN.COMBINE.ENABLED=False: Detectron2 no longer reads it (the panoptic "
            "merge always runs; model.inference(do_postprocess=False) skips it): set it True."
        )


def check_config(cfg, train=True, world_size=None):
    """Raises :class:`ConfigError` for a value that Detectron2 would reject only deep inside
    building or training (``world_size``: the number of processes, default the current one)."""
    rcnn, value = _rcnn(cfg) is not None, cfg.MODEL.ROI_HEADS.NUM_CLASSES
    world_size, reference = world_size or comm.get_world_size(), cfg.SOLVER.REFERENCE_WORLD_SIZE
    if train and reference and (reference < 0 or cfg.SOLVER.IMS_PER_BATCH % reference):
        raise ConfigError(
            f"SOLVER.REFERENCE_WORLD_SIZE={reference}: must be 0 (off) or a number of processes "
            f"that divides SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}."
        )
    if train:  # the values that train: Detectron2's scaling to world_size processes
        cfg = DefaultTrainer.auto_scale_workers(cfg, world_size)
    check_registered_names(cfg)
    check_panet_parts(cfg)
    ok = not rcnn or isinstance(value, int) and value >= 1
    things = "a positive integer, the dataset's number of thing classes"
    _require(ok, "MODEL.ROI_HEADS.NUM_CLASSES", value, things)
    mean, std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
    channels = INPUT_CHANNELS.get(cfg.INPUT.FORMAT)
    if not channels or len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ConfigError(
            f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}, MODEL.PIXEL_MEAN={list(mean)}, MODEL.PIXEL_STD="
            f"{list(std)}: the format must be 'BGR', 'RGB', 'YUV-BT.601' or 'L', with a mean and "
            "a (positive) deviation per channel (3; 'L': 1)."
        )
    _check_counts(cfg, train)
    keys = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST"]  # in [0, 1]
    keys += ["MODEL.RPN.NMS_THRESH", "MODEL.RPN.IOU_THRESHOLDS", "MODEL.ROI_HEADS.IOU_THRESHOLDS"]
    if train:
        keys += ["MODEL.RPN.POSITIVE_FRACTION", "MODEL.ROI_HEADS.POSITIVE_FRACTION"]
        keys += ["SOLVER.WARMUP_FACTOR"]
    for key in keys:
        check_fractions(key, _value(cfg, key))
    _check_model_values(cfg, _rcnn(cfg))
    if train:
        _check_training(cfg, world_size)
    model = _build_on_meta_device(cfg)
    if model is not None:
        check_parameter_memory(model, cfg.MODEL.META_ARCHITECTURE)
        _check_sem_seg_strides(cfg, model)


def _build_on_meta_device(cfg):
    """The model of ``cfg`` built on the meta device (no memory, no initialisation, the random
    state kept), its backbone's features checked against the heads' IN_FEATURES; a refusal of
    Detectron2, fvcore, torch or panet_d2 while building is a :class:`ConfigError` naming where
    it was raised. None when it cannot be built there for another reason (build_model says)."""
    arch, name = meta_architecture(cfg), "the backbone " + cfg.MODEL.BACKBONE.NAME
    # the IN_FEATURES that Detectron2's RPN and RetinaNet read unchecked (a KeyError)
    rpn = _rcnn(cfg) is not None and cfg.MODEL.PROPOSAL_GENERATOR.NAME in ("RPN", "RRPN")
    retina = isinstance(arch, type) and issubclass(arch, RetinaNet)
    readers = {"MODEL.RPN.IN_FEATURES": rpn, "MODEL.RETINANET.IN_FEATURES": retina}
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        with torch.device("meta"), quiet, torch.random.fork_rng(devices=[]):
            shapes = build_backbone(cfg).output_shape()
            for key, read in readers.items():
                if read:
                    check_in_features(key, _value(cfg, key), shapes, name)
            return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except ConfigError:
        raise
    except Exception as e:
        if isinstance(e, ValueError) and "divisible by num_groups" in str(e):
            raise ConfigError(  # torch's GroupNorm: channels that its 32 groups do not divide
                f"The model cannot be built: {e}: a 'GN' norm on a layer of other channels; set "
                "that part's NORM key to another norm, or its channels to a multiple of 32."
            ) from None
        where = raised_in_libraries(e)
        if where is None or not isinstance(e, (AssertionError, KeyError, ValueError)):
            return None
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ConfigError(
            f"The model cannot be built from this config ({cfg.MODEL.META_ARCHITECTURE}): {why} "
            f"(raised at {where}); check the keys of that part."
        ) from None


def _check_sem_seg_strides(cfg, model):
    """A :class:`ConfigError` if Panoptic FPN's semantic head (Detectron2's SemSegFPNHead, which
    sums its features' upsampled maps) reads a feature coarser than the multiple the images are
    padded to: its map then misses the others' size for some image sizes."""
    head, backbone = getattr(model, "sem_seg_head", None), getattr(model, "backbone", None)
    if not isinstance(head, SemSegFPNHead) or backbone is None:  # (other heads resize, e.g.
        return  # DeepLab's)
    features, padded = list(head.in_features), backbone.size_divisibility
    if len(features) < 2 or padded <= 1:
        return
    shapes = backbone.output_shape()
    coarse = [f for f in features if f in shapes and padded % shapes[f].stride]
    if coarse:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(features)}: {coarse[0]!r} has stride "
            f"{shapes[coarse[0]].stride}, coarser than the {padded} px multiples the backbone pads"
            " images to: its upsampled map would not match the others' for some image sizes. "
            f"Read features of strides dividing {padded}."
        )


def machine_memory():
    """This machine's memory in bytes: physical, or a smaller cgroup (container) limit."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                memory = min(memory, int(f.read().strip()))
        except (OSError, ValueError):  # none, or "max"
            pass
    return memory


def check_parameter_memory(model, name, memory=None):
    """Raises :class:`ConfigError` if the parameters of ``model`` (built on the meta device) take
    more than half of ``memory`` bytes (default: this machine's)."""
    memory = memory or machine_memory()
    sizes = {n: p.numel() * 4 for n, p in model.named_parameters()}  # float32
    if sum(sizes.values()) > memory / 2:
        largest = max(sizes, key=sizes.get)
        shape = tuple(model.get_parameter(largest).shape)
        raise ConfigError(
            f"The model {name} has {sum(sizes.values()) // 4:,} parameters "
            f"({sum(sizes.values()) / 2**30:.1f} GiB in float32), more than half this machine's "
            f"memory ({memory / 2**30:.1f} GiB); the largest: {largest} {shape}: check the "
            "channel, width and resolution keys of its part."
        )


# The annotation rule, the same for training and evaluation (docs/design.md)
_FAR = 4
_REASONS = {
    "polygons": "without a valid polygon",
    "empty": "with an empty or no segmentation (MODEL.MASK_ON)",
    "box": "with a box of non-positive size",
    "coordinates": f"with a coordinate not finite or beyond {_FAR}x the image size",
    "rle": "with an RLE mask of another size than its image",
    "rle_counts": "with an RLE mask whose runs do not make its height x width (damaged)",
    "bbox": "with no bbox or one that is not 4 numbers (5: XYWHA_ABS)",
    "iscrowd": "with an iscrowd other than 0 or 1",
}


def _far_or_not_finite(values, bound):
    """Whether a box or polygon has a value that is not a finite number or is beyond ``bound``."""
    try:
        finite = math.isfinite(sum(values))  # NaN, inf, or values that overflow when added
        return bool(values) and not (finite and -bound <= min(values) and max(values) <= bound)
    except (TypeError, OverflowError):  # not numbers, or integers beyond a float
        return True


def _rle_pixels(counts):
    """The pixels the runs of an RLE mask's ``counts`` cover: a list's sum, or that of COCO's
    compressed string as pycocotools reads it (``rleFrString``); None if they are not runs."""
    if isinstance(counts, list):
        ok = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in counts)
        return sum(counts) if ok and min(counts, default=0) >= 0 else None
    counts = counts.decode("latin1") if isinstance(counts, bytes) else counts
    if not isinstance(counts, str):
        return None
    runs, value, shift = [], 0, 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64:  # not what pycocotools writes ("0" to "o")
            return None
        value, shift = value | (c & 0x1F) << shift, shift + 5
        if c & 0x20:  # more 5-bit groups follow
            continue
        value -= (1 << shift) if c & 0x10 else 0  # its sign bit
        value += runs[-2] if len(runs) > 2 else 0  # the fourth run on: differences
        if value < 0:
            return None
        runs.append(value)
        value, shift = 0, 0
    return sum(runs) if shift == 0 else None


def _problem(a, masks, image):
    """(why annotation ``a`` of ``image`` is invalid or None, its valid polygons or None)."""
    size = (image or {}).get("height"), (image or {}).get("width")
    ok = all(isinstance(n, (int, float)) and math.isfinite(n) and n > 0 for n in size)
    size = size if ok else None
    box, segm = a.get("bbox"), a.get("segmentation")
    mode = a.get("bbox_mode", BoxMode.XYWH_ABS)  # a COCO annotation: XYWH
    seq = box.tolist() if hasattr(box, "tolist") else box  # an array or a tensor too
    four = isinstance(seq, (list, tuple)) and len(seq) == (5 if mode == BoxMode.XYWHA_ABS else 4)
    if not (four and all(isinstance(v, numbers.Real) for v in seq)):  # none too
        return "bbox", None
    if a.get("iscrowd", 0) not in (0, 1):
        return "iscrowd", None
    ok = box is not None and mode in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    box = BoxMode.convert(list(box), mode, BoxMode.XYXY_ABS) if ok else None
    bound = _FAR * max(size) if size else math.inf
    lines = [box] + (segm if isinstance(segm, list) else [])
    if any(_far_or_not_finite(v, bound) for v in lines if v is not None):
        return "coordinates", None
    if isinstance(segm, dict):  # an RLE mask: of the image's size, its runs making it
        try:
            rle_size = [int(n) for n in segm.get("size")]
        except (TypeError, ValueError, OverflowError):  # no size, or not numbers
            return "rle", None
        if size and rle_size != [int(size[0]), int(size[1])]:
            return "rle", None
        if len(rle_size) != 2 or _rle_pixels(segm.get("counts")) != math.prod(rle_size):
            return "rle_counts", None  # pycocotools would decode uninitialised memory, or fail
    polygons = None
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]
        if segm and not polygons:
            return "polygons", polygons
    if masks and (segm is None or isinstance(segm, list) and not segm):
        return "empty", polygons
    empty_box = box is not None and (box[2] <= box[0] or box[3] <= box[1])
    return ("box" if empty_box else None), polygons


def _drop_invalid(annos, masks, image_of):
    """(valid ``annos``, Counter of reasons, polygons removed, first one with a problem or None)."""
    kept, counts, removed, first = [], Counter(), 0, None
    for a in annos:
        reason, polygons = _problem(a, masks, image_of(a))
        dropped = len(a["segmentation"]) - len(polygons) if polygons is not None else 0
        if first is None and (reason is not None or dropped):
            first = a
        if reason is not None:
            counts[reason] += 1
        else:
            removed += dropped
            kept.append(dict(a, segmentation=polygons) if dropped else a)
    return kept, counts, removed, first


def _reasons(counts):
    return ", ".join(f"{n} {_REASONS[r]}" for r, n in counts.items())


def _log_dropped(where, counts, total, polygons, first, then):
    if not counts and not polygons:
        return
    msg = f"{where}: dropped {sum(counts.values())} of {total} annotations"
    msg += f" ({_reasons(counts)})" if counts else ""
    if polygons:
        msg += f" and {polygons} polygon(s) with fewer than 6 coordinates or of odd length"
    logger.warning(f"{msg}; the first: {first}. {then}")


def drop_invalid_annotations(dicts, names, key, masks):
    """The dataset dicts ``dicts`` (of datasets ``names``, config ``key``) without the invalid
    annotations and polygons, logged; a :class:`DatasetError` if all are invalid."""
    out, counts, total, polygons, first = [], Counter(), 0, 0, None
    for d in dicts:
        annos = d.get("annotations")
        if annos:
            kept, c, p, f = _drop_invalid(annos, masks, lambda a: d)
            counts, polygons, total = counts + c, polygons + p, total + len(annos)
            if first is None and f is not None:
                first = f"image {d.get('image_id')!r} ({d.get('file_name')!r})"
            d = dict(d, annotations=kept) if (c or p) else d
        out.append(d)
    files = [f for f in (MetadataCatalog.get(n).get("json_file", None) for n in names) if f]
    where = f"Dataset{'s' * (len(names) > 1)} {', '.join(map(repr, names))} ({key})"
    where += f" from {', '.join(map(repr, files))}" if files else ""
    if total and sum(counts.values()) == total:
        empty = " A model with MODEL.MASK_ON needs a segmentation in every annotation."
        msg = f"{where}: all {total} annotations are invalid: {_reasons(counts)}."
        raise DatasetError(msg + (empty if counts.get("empty") else ""))
    _log_dropped(where, counts, total, polygons, first, "Evaluation drops the same ones.")
    return out


def check_mask_format(dicts, names, mask_format):
    """A :class:`DatasetError` if ``INPUT.MASK_FORMAT`` 'polygon' meets an RLE mask in a non-crowd
    annotation of ``dicts`` (``DATASETS.TRAIN`` ``names``): Detectron2's mapper would fail later."""
    for d in dicts if mask_format == "polygon" else ():
        for a in d.get("annotations") or ():
            if isinstance(a.get("segmentation"), dict) and not a.get("iscrowd", 0):
                raise DatasetError(
                    f"Dataset {', '.join(map(repr, names))} (DATASETS.TRAIN): image "
                    f"{d.get('image_id')!r} ({d.get('file_name')!r}) has an RLE mask, which "
                    "INPUT.MASK_FORMAT='polygon' cannot read: set INPUT.MASK_FORMAT 'bitmask'."
                )


def drop_invalid_coco_annotations(coco_api, name, masks):
    """Drops the invalid annotations and polygons of an evaluator's pycocotools ``COCO``."""
    annos, imgs = coco_api.dataset.get("annotations", []), getattr(coco_api, "imgs", {})
    kept, counts, polys, first = _drop_invalid(annos, masks, lambda a: imgs.get(a.get("image_id")))
    if len(kept) != len(annos) or polys:
        coco_api.dataset["annotations"] = kept
        with contextlib.redirect_stdout(io.StringIO()):
            coco_api.createIndex()
        file = MetadataCatalog.get(name).get("json_file", None)
        where = f"Dataset {name!r} (evaluation ground truth{f' from {file!r}' if file else ''})"
        first = f"annotation {first.get('id')!r} of image {first.get('image_id')!r}"
        _log_dropped(where, counts, len(annos), polys, first, "Training drops the same ones.")
    return len(annos) - len(kept)


_COCO_AREA_MAX = 1e10  # pycocotools' "all" area range: [0, 1e5 ** 2]


def check_coco_ground_truth(name, evaluator_type="coco"):
    """Raises :class:`DatasetError` naming the first annotation of the ``json_file`` of test
    dataset ``name`` that COCO evaluation cannot score: an id not an integer >= 1 (pycocotools
    takes 0 as "unmatched"), no iscrowd, or an area not a number in [0, 1e10]; or, of a "coco"
    one, an empty annotation list (AP nan)."""
    file = MetadataCatalog.get(name).get("json_file", None)
    if not _local(file):
        return
    with PathManager.open(file) as f:
        data = json.load(f)
    annos = data.get("annotations") if isinstance(data, dict) else None
    if annos == [] and data.get("images") and evaluator_type == "coco":  # (no images: said later)
        logger.warning(
            f"Dataset {name!r} (DATASETS.TEST) from {file!r} has no annotations: its AP will be "
            "nan (the predictions are written all the same; without an 'annotations' key, as "
            "COCO test-dev, they are written and not scored)."
        )
    bad = []
    for a in [a for a in annos if isinstance(a, dict)] if isinstance(annos, list) else ():
        i, area = a.get("id"), a.get("area")
        if not (type(i) is int and 1 <= i < 2**63):
            bad.append((a, f"the id {i!r}"))
        elif "iscrowd" not in a or "area" not in a:
            bad.append((a, "no iscrowd" if "iscrowd" not in a else "no area"))
        elif isinstance(area, bool) or not isinstance(area, numbers.Real):
            bad.append((a, f"the area {area!r}"))
        elif not 0 <= area <= _COCO_AREA_MAX:  # NaN too
            bad.append((a, f"the area {area!r}"))
    if bad:
        a, what = bad[0]
        raise DatasetError(
            f"Dataset {name!r} (DATASETS.TEST) from {file!r}: annotation {a.get('id')!r} of image "
            f"{a.get('image_id')!r} has {what} ({len(bad)} such annotation(s)): COCO evaluation "
            "needs each annotation's id, an integer >= 1 (pycocotools takes 0 as unmatched), its "
            "iscrowd (0 or 1) and its area, a number of pixels in [0, 1e10]."
        )


def check_panoptic_categories(name):
    """Raises :class:`DatasetError` naming the first segment of the ``panoptic_json`` of test
    dataset ``name`` whose category is not among its categories: panopticapi skips it, silently,
    and counts a prediction on it as a false positive (PQ lowered)."""
    file = MetadataCatalog.get(name).get("panoptic_json", None)
    if not _local(file) or not os.path.isfile(file):
        return
    with PathManager.open(file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        return
    known = {c.get("id") for c in data.get("categories") or () if isinstance(c, dict)}
    bad = [
        (a, s)
        for a in data["annotations"]
        if isinstance(a, dict)
        for s in a.get("segments_info") or ()
        if isinstance(s, dict) and s.get("category_id") not in known
    ]
    if bad:
        a, s = bad[0]
        raise DatasetError(
            f"Dataset {name!r} (DATASETS.TEST) from {file!r}: segment {s.get('id')!r} of image "
            f"{a.get('image_id')!r} has the category_id {s.get('category_id')!r}, which is not "
            f"among its categories ({len(bad)} such segment(s)): panopticapi would skip it and "
            "count a prediction on it as a false positive. Fix the id, or add the category."
        )


# the ground-truth PNGs that Detectron2's Cityscapes evaluators glob in gt_dir/<city>/
_CITYSCAPES_GT = {"cityscapes_instance": "_gtFine_instanceIds.png"}
_CITYSCAPES_GT["cityscapes_sem_seg"] = "_gtFine_labelIds.png"


def check_cityscapes_ground_truth(name, evaluator_type, dicts):
    """Raises :class:`DatasetError` unless the ``gt_dir`` of Cityscapes test dataset ``name`` has
    one ground-truth PNG of its image's size for each image of records ``dicts``, and no other:
    cityscapesscripts scores the PNGs it finds, skipping images without one (silently) and
    failing on one without an image."""
    suffix, gt_dir = _CITYSCAPES_GT[evaluator_type], MetadataCatalog.get(name).get("gt_dir", None)
    if not _local(gt_dir):
        return
    found = glob.glob(os.path.join(glob.escape(gt_dir), "*", "*" + suffix))
    found = {os.path.basename(p)[: -len(suffix)]: p for p in found}  # city_sequence_frame
    images = {"_".join(os.path.basename(d["file_name"]).split("_")[:3]): d for d in dicts}
    missing, extra = sorted(set(images) - set(found)), sorted(set(found) - set(images))
    if missing or extra:
        if missing:
            what = f"the image {images[missing[0]]['file_name']!r} has no ground truth"
        else:
            what = f"the ground truth {found[extra[0]]!r} has no image in the dataset"
        raise DatasetError(
            f"Dataset {name!r} (DATASETS.TEST), gt_dir {gt_dir!r}: {what} ({len(missing)} "
            f"image(s) without, {len(extra)} PNG(s) without an image): Cityscapes evaluation "
            f"scores one <city>/<city>_<sequence>_<frame>{suffix} for each image, and no other."
        )
    for key, d in images.items():
        check_ground_truth_png(d, found[key], f"Cityscapes ground truth of dataset {name!r}")


def check_expected_results(cfg, results=None):
    """Raises :class:`ConfigError` unless each entry of TEST.EXPECTED_RESULTS is [task, metric,
    value, tolerance] (Detectron2's ``verify_results``) of a task the evaluation gives: one of
    ``results`` or, before the run, of the evaluators' result names ("<task>_TTA" with TTA)."""
    expected = cfg.TEST.EXPECTED_RESULTS
    if not len(expected):
        return
    if len(cfg.DATASETS.TEST) != 1:  # (two: Detectron2's results are by dataset, then task)
        raise ConfigError(
            f"TEST.EXPECTED_RESULTS is set, DATASETS.TEST={list(cfg.DATASETS.TEST)}: Detectron2's "
            "verify_results checks the results of one test dataset; give one."
        )
    evaluator_type = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("evaluator_type", None)
    off = {"segm": not cfg.MODEL.MASK_ON, "keypoints": not cfg.MODEL.KEYPOINT_ON}
    tasks = [t for t in TASKS.get(evaluator_type, ()) if not off.get(t)]
    tasks += [t + "_TTA" for t in tasks] * bool(cfg.TEST.AUG.ENABLED)
    tasks = list(results) if results is not None else tasks
    for entry in expected:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 4
        ok = ok and all(isinstance(v, str) for v in entry[:2])
        ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in entry[2:])
        if not (ok and math.isfinite(entry[2]) and 0 <= entry[3] < math.inf):
            raise ConfigError(
                f"TEST.EXPECTED_RESULTS entry {entry!r}: must be [task, metric, expected value, "
                "tolerance >= 0] (Detectron2's verify_results), e.g. [['bbox', 'AP', 38.5, 0.2]]."
            )
        if entry[0] not in tasks:
            raise ConfigError(
                f"TEST.EXPECTED_RESULTS names the task {entry[0]!r}: the evaluation of "
                f"DATASETS.TEST gives {', '.join(map(repr, tasks)) or 'none'}."
            )


def check_run_values(cfg, train=True):
    """The checks of :func:`check_inputs` that load no dataset (a fraction of a second): the
    config values, the datasets' registration, metadata files and evaluators. Returns the
    (dataset, config key) pairs checked."""
    check_config(cfg, train=train)
    files = [("DATASETS.PROPOSAL_FILES_TEST", "DATASETS.TEST")]
    files += [("DATASETS.PROPOSAL_FILES_TRAIN", "DATASETS.TRAIN")] * train
    for files_key, key in files if cfg.MODEL.LOAD_PROPOSALS else ():
        if len(_value(cfg, files_key)) != len(_value(cfg, key)):
            raise ConfigError(
                f"MODEL.LOAD_PROPOSALS=True reads one proposal file per dataset of {key} "
                f"{list(_value(cfg, key))}: {files_key}={list(_value(cfg, files_key))}."
            )
    datasets = [(name, "DATASETS.TEST") for name in cfg.DATASETS.TEST]
    if train:
        if not len(cfg.DATASETS.TRAIN):
            raise DatasetError("DATASETS.TRAIN is empty: nothing to train on.")
        datasets = [(name, "DATASETS.TRAIN") for name in cfg.DATASETS.TRAIN] + datasets
    for name, key in datasets:
        check_dataset(name, key)
    for name in cfg.DATASETS.TEST:
        evaluator_type = check_evaluator_type(name)  # panoptic and semantic ones read "sem_seg"
        segments = evaluator_type.endswith("panoptic_seg") or evaluator_type in SEM_SEG_TYPES
        if segments and _rcnn(cfg) and not issubclass(_rcnn(cfg), PanopticFPN):
            raise DatasetError(
                f"Dataset {name!r} (DATASETS.TEST) is evaluated as {evaluator_type!r}: the model "
                f"{cfg.MODEL.META_ARCHITECTURE} gives instances only (test an instance dataset)."
            )
    return datasets


def check_inputs(cfg, train=True):
    """The checks before a training (``train``) or evaluation run of ``cfg``."""
    datasets = check_run_values(cfg, train)
    for name in cfg.DATASETS.TEST:
        evaluator_type = check_evaluator_type(name)
        if evaluator_type.endswith("panoptic_seg"):  # panopticapi's; before loading (KeyError)
            check_panoptic_categories(name)
        with loading_dataset([name], "DATASETS.TEST"):
            dicts = DatasetCatalog.get(name)
            check_files(dicts, name, "DATASETS.TEST")
            if evaluator_type in ("coco", "coco_panoptic_seg"):  # those COCOEvaluator scores
                check_coco_ground_truth(name, evaluator_type)
            if evaluator_type in _CITYSCAPES_GT:
                check_cityscapes_ground_truth(name, evaluator_type, dicts)
    check_num_classes(cfg, datasets)
    check_class_order(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
    for name in cfg.DATASETS.TEST:
        if MetadataCatalog.get(name).get("evaluator_type", None) in SEM_SEG_TYPES:
            panoptic_to_dataset_classes(cfg, name)
    check_tta(cfg)
    check_expected_results(cfg)
