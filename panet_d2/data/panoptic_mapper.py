# -*- coding: utf-8 -*-
"""Panoptic label space and a dataset mapper that reads COCO-format panoptic PNGs.

Internal (model) convention = Detectron2's ``*_panoptic_separated`` convention:

* thing classes ``0 .. T-1`` (ROI heads' ``gt_classes``);
* semantic labels: ``0`` = "other" (every thing pixel, crowd included), ``1 .. S`` =
  stuff classes, ``255`` = void / ignore.

:class:`PanopticLabelSpace` converts between that and a dataset's metadata
convention; :class:`PanopticDatasetMapper` turns a dict with ``pan_seg_file_name`` +
``segments_info`` (as produced by Detectron2's ``load_coco_panoptic_json`` /
``load_cityscapes_panoptic``) into ``image``, ``instances`` and ``sem_seg``, without
any preprocessed semantic PNGs.
"""

import copy
import logging
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.file_io import PathManager

__all__ = [
    "IGNORE_LABEL",
    "PanopticLabelSpace",
    "PanopticDatasetMapper",
    "rgb2id",
    "read_panoptic_png",
    "panoptic_to_semantic",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
THINGS_LABEL = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG (H, W, 3) uint8 -> (H, W) uint32 segment ids (panopticapi's rgb2id)."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {color.shape}")
    color = color[..., :3].astype(np.uint32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO-format panoptic PNG and return its (H, W) uint32 segment ids.

    Raises FileNotFoundError naming ``path`` if it is missing or cannot be decoded.
    """
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Panoptic PNG not found: {path}") from e
    except Exception as e:  # unreadable / not an image
        raise FileNotFoundError(f"Cannot read panoptic PNG {path}: {e}") from e
    if img.mode != "RGB":
        img = img.convert("RGB")
    return rgb2id(np.asarray(img))


def _meta_get(meta, key, default=None):
    if isinstance(meta, dict):
        return meta.get(key, default)
    return meta.get(key, default) if hasattr(meta, "get") else getattr(meta, key, default)


def _meta_name(meta):
    if isinstance(meta, dict):
        return meta.get("name", "<unnamed dataset>")
    return getattr(meta, "name", "<unnamed dataset>")


class PanopticLabelSpace:
    """Mapping between a dataset's category conventions and the internal one.

    Built with :meth:`from_metadata` from a Detectron2 ``Metadata`` (or dict) with
    ``thing_dataset_id_to_contiguous_id`` and ``stuff_dataset_id_to_contiguous_id``.
    Supported conventions:

    * separated (``coco_2017_*_panoptic_separated``, this project's datasets): things
      contiguous ``0..T-1``, stuff contiguous ``1..S`` (``0 -> 0`` "things" pseudo
      entry ignored) -> identity;
    * standard / shared id space (``coco_2017_*_panoptic``,
      ``cityscapes_fine_panoptic_*``): thing and stuff contiguous ids live in one
      space (e.g. Cityscapes trainIds, things 11..18); stuff entries that are things
      are ignored.

    Internal thing index ``i`` = rank of its contiguous id among the sorted thing
    contiguous ids; internal stuff label ``s`` = 1 + rank among the sorted stuff
    contiguous ids.

    Attributes:
        dataset_name (str)
        thing_dataset_ids, stuff_dataset_ids (list[int]): sorted dataset category ids.
        thing_contiguous_ids (list[int]): ``[i]`` = dataset-contiguous id of thing ``i``.
        stuff_contiguous_ids (list[int]): ``[s - 1]`` = dataset-contiguous id of stuff ``s``.
        thing_classes (list[str]): T names in internal order.
        stuff_classes (list[str]): ``["things"] +`` S stuff names (semantic head classes).
        num_things, num_stuff (int); num_sem_classes (int) = S + 1.
        is_separated (bool): whether internal ids == the dataset's contiguous ids.
    """

    def __init__(
        self,
        thing_dataset_id_to_contiguous_id: Dict[int, int],
        stuff_dataset_id_to_contiguous_id: Dict[int, int],
        thing_names: Optional[List[str]] = None,
        stuff_names: Optional[List[str]] = None,
        dataset_name: str = "<unnamed dataset>",
    ):
        self.dataset_name = dataset_name
        thing_map = {int(k): int(v) for k, v in thing_dataset_id_to_contiguous_id.items()}
        stuff_map = {
            int(k): int(v)
            for k, v in stuff_dataset_id_to_contiguous_id.items()
            if int(k) not in thing_map
        }
        self._thing_map, self._stuff_map = thing_map, stuff_map
        self.thing_dataset_ids = sorted(thing_map)
        self.stuff_dataset_ids = sorted(stuff_map)
        self.thing_contiguous_ids = sorted(set(thing_map.values()))
        self.stuff_contiguous_ids = sorted(set(stuff_map.values()))
        self.thing_contiguous_to_internal = {c: i for i, c in enumerate(self.thing_contiguous_ids)}
        self.stuff_contiguous_to_internal = {
            c: s + 1 for s, c in enumerate(self.stuff_contiguous_ids)
        }
        self.thing_dataset_id_to_internal = {
            k: self.thing_contiguous_to_internal[v] for k, v in thing_map.items()
        }
        self.stuff_dataset_id_to_internal = {
            k: self.stuff_contiguous_to_internal[v] for k, v in stuff_map.items()
        }
        self.num_things = len(self.thing_contiguous_ids)
        self.num_stuff = len(self.stuff_contiguous_ids)
        self.num_sem_classes = self.num_stuff + 1
        self.is_separated = self.thing_contiguous_ids == list(
            range(self.num_things)
        ) and self.stuff_contiguous_ids == list(range(1, self.num_stuff + 1))

        def _name(names, c, kind):
            if names is not None and 0 <= c < len(names):
                return names[c]
            return f"{kind}_{c}"

        self.thing_classes = [_name(thing_names, c, "thing") for c in self.thing_contiguous_ids]
        self.stuff_classes = ["things"] + [
            _name(stuff_names, c, "stuff") for c in self.stuff_contiguous_ids
        ]

    @classmethod
    def from_metadata(cls, meta) -> "PanopticLabelSpace":
        """Build from a Detectron2 ``Metadata`` (or a dict with the same keys)."""
        name = _meta_name(meta)
        thing_map = _meta_get(meta, "thing_dataset_id_to_contiguous_id")
        stuff_map = _meta_get(meta, "stuff_dataset_id_to_contiguous_id")
        if thing_map is None or stuff_map is None:
            raise ValueError(
                f"Dataset {name!r}: metadata needs 'thing_dataset_id_to_contiguous_id' and "
                "'stuff_dataset_id_to_contiguous_id' to define a panoptic label space"
            )
        stuff_names = _meta_get(meta, "stuff_classes")
        stuff_map = dict(stuff_map)
        # Detectron2's separated metadata has a "things" pseudo stuff entry 0 -> 0.
        if stuff_map.get(0) == 0 and 0 not in thing_map:
            others = [v for k, v in stuff_map.items() if k != 0]
            if (stuff_names and str(stuff_names[0]).lower() in ("things", "thing")) or (
                0 not in others
            ):
                del stuff_map[0]
        return cls(
            thing_map,
            stuff_map,
            thing_names=_meta_get(meta, "thing_classes"),
            stuff_names=stuff_names,
            dataset_name=name,
        )

    # ------------------------------------------------------------- conversions
    def dataset_id_to_internal(self, category_id: int) -> Tuple[bool, int]:
        """Dataset category id -> (isthing, internal thing index or stuff label 1..S)."""
        cid = int(category_id)
        if cid in self.thing_dataset_id_to_internal:
            return True, self.thing_dataset_id_to_internal[cid]
        if cid in self.stuff_dataset_id_to_internal:
            return False, self.stuff_dataset_id_to_internal[cid]
        raise ValueError(
            f"Unknown category id {category_id!r} in dataset {self.dataset_name!r}: it is "
            f"neither a thing ({len(self.thing_dataset_ids)} ids) nor a stuff "
            f"({len(self.stuff_dataset_ids)} ids) dataset category id"
        )

    def contiguous_to_internal(self, category_id: int, isthing: bool) -> int:
        """Dataset-contiguous id (as in Detectron2-loaded ``segments_info``) -> internal."""
        table = self.thing_contiguous_to_internal if isthing else self.stuff_contiguous_to_internal
        try:
            return table[int(category_id)]
        except KeyError:
            kind = "thing" if isthing else "stuff"
            raise ValueError(
                f"Unknown {kind} contiguous category id {category_id!r} in dataset "
                f"{self.dataset_name!r}; known: {sorted(table)}"
            ) from None

    def segment_to_internal(self, segment_info: dict) -> Tuple[bool, int]:
        """A ``segments_info`` entry -> (isthing, internal id).

        Entries with an ``"isthing"`` key (Detectron2 loaders) carry dataset-contiguous
        ids; entries without it (raw COCO panoptic JSON) carry dataset category ids.
        """
        if "isthing" in segment_info:
            isthing = bool(segment_info["isthing"])
            return isthing, self.contiguous_to_internal(segment_info["category_id"], isthing)
        return self.dataset_id_to_internal(segment_info["category_id"])

    def thing_to_contiguous(self, index: int) -> int:
        """Internal thing index -> dataset-contiguous thing id."""
        return self.thing_contiguous_ids[int(index)]

    def stuff_to_contiguous(self, label: int) -> int:
        """Internal stuff label (1..S) -> dataset-contiguous stuff id."""
        label = int(label)
        if not 1 <= label <= self.num_stuff:
            raise ValueError(f"stuff label must be in [1, {self.num_stuff}], got {label}")
        return self.stuff_contiguous_ids[label - 1]

    def internal_to_contiguous(self, category_id: int, isthing: bool) -> int:
        return (
            self.thing_to_contiguous(category_id)
            if isthing
            else self.stuff_to_contiguous(category_id)
        )

    def segments_info_to_dataset(self, segments_info: List[dict]) -> List[dict]:
        """Copy of model-style ``segments_info`` (internal ids, ``isthing`` set) with
        ``category_id`` in the dataset's contiguous convention, as
        ``COCOPanopticEvaluator`` expects for this dataset's metadata."""
        out = []
        for s in segments_info:
            s = dict(s)
            s["category_id"] = self.internal_to_contiguous(s["category_id"], bool(s["isthing"]))
            out.append(s)
        return out

    def _key(self):
        return (self._thing_map, self._stuff_map)

    def __eq__(self, other):
        return isinstance(other, PanopticLabelSpace) and self._key() == other._key()

    def __repr__(self):
        return (
            f"PanopticLabelSpace(dataset={self.dataset_name!r}, things={self.num_things}, "
            f"stuff={self.num_stuff}, separated={self.is_separated})"
        )


def _segment_tables(segments_info, label_space, where):
    """segments_info -> (sorted ids, per-sorted-id semantic label, isthing, iscrowd, class)."""
    n = len(segments_info)
    ids = np.empty(n, dtype=np.int64)
    sem = np.empty(n, dtype=np.int64)
    isthing = np.zeros(n, dtype=bool)
    crowd = np.zeros(n, dtype=bool)
    cls = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(segments_info):
        try:
            thing, internal = label_space.segment_to_internal(s)
        except ValueError as e:
            raise ValueError(f"{e} (segment {s.get('id')} of {where})") from None
        ids[i] = int(s["id"])
        isthing[i] = thing
        crowd[i] = bool(s.get("iscrowd", 0))
        cls[i] = internal if thing else -1
        sem[i] = THINGS_LABEL if thing else internal
    order = np.argsort(ids, kind="stable")
    ids, sem, isthing, crowd, cls = ids[order], sem[order], isthing[order], crowd[order], cls[order]
    if n > 1 and (np.diff(ids) == 0).any():
        dup = ids[1:][np.diff(ids) == 0][0]
        raise ValueError(f"duplicate segment id {dup} in segments_info of {where}")
    return ids, sem, isthing, crowd, cls


def _segment_index(pan_ids, ids, where, warn=True):
    """(H, W) panoptic ids -> (H, W) int64 index into sorted ``ids`` + 1; 0 = void/unknown."""
    flat = pan_ids.reshape(-1).astype(np.int64)
    if len(ids) == 0:
        index = np.zeros(flat.shape, dtype=np.int64)
        unknown = flat != 0
    else:
        pos = np.searchsorted(ids, flat)
        pos_c = np.minimum(pos, len(ids) - 1)
        hit = ids[pos_c] == flat
        index = np.where(hit, pos_c + 1, 0)
        unknown = ~hit & (flat != 0)
    if warn:
        counts = np.bincount(index, minlength=len(ids) + 1)
        missing = ids[counts[1:] == 0]
        if len(missing):
            logger.warning(
                f"{where}: segment id(s) {missing.tolist()[:10]} listed in segments_info are "
                "absent from the panoptic PNG"
            )
        if unknown.any():
            extra = np.unique(flat[unknown])
            logger.warning(
                f"{where}: panoptic PNG contains segment id(s) {extra.tolist()[:10]} that are "
                "not in segments_info; treated as void (255)"
            )
    return index.reshape(pan_ids.shape)


def panoptic_to_semantic(pan_ids, segments_info, label_space, where="<panoptic image>"):
    """(H, W) panoptic segment ids -> (H, W) uint8 semantic map in the separated
    convention: thing pixels (crowd too) 0, stuff pixels 1..S, void/unknown 255.
    Same result as Detectron2's ``datasets/prepare_panoptic_fpn.py``."""
    if label_space.num_stuff > 254:
        raise ValueError(f"{label_space.num_stuff} stuff classes do not fit in uint8")
    ids, sem, *_ = _segment_tables(segments_info, label_space, where)
    index = _segment_index(np.asarray(pan_ids), ids, where, warn=False)
    lut = np.concatenate([[IGNORE_LABEL], sem]).astype(np.uint8)
    return lut[index]


class _PanopticAugInput(T.AugInput):
    """AugInput that also carries the (H, W) segment index map, transformed like sem_seg."""

    def __init__(self, image, *, sem_seg=None, pan_index=None):
        super().__init__(image, sem_seg=sem_seg)
        self.pan_index = pan_index

    def transform(self, tfm):
        super().transform(tfm)
        if self.pan_index is not None:
            self.pan_index = tfm.apply_segmentation(self.pan_index)


class PanopticDatasetMapper:
    """Map a Detectron2 panoptic dataset dict into the separated training format.

    Input dicts (training): ``file_name``, ``pan_seg_file_name`` and
    ``segments_info`` (each with ``id``, ``category_id``, optionally ``iscrowd`` and
    ``isthing``; with ``isthing`` the category ids are the dataset's contiguous ids,
    without it raw dataset category ids). Dicts of Detectron2's builtin
    ``coco_2017_*_panoptic_separated`` datasets, which instead carry instance
    ``annotations`` (polygons) and a preprocessed separated ``sem_seg_file_name``,
    are supported too.

    Output (training): ``image`` (C, H, W) uint8 tensor, ``instances``
    (``gt_boxes`` tight boxes of the masks, ``gt_classes`` internal thing index,
    ``gt_masks`` BitMasks; non-crowd things whose mask survived the augmentation),
    ``sem_seg`` (H, W) int64 (things incl. crowd 0, stuff 1..S, void 255), plus the
    input's other keys. The panoptic ids go through exactly the same geometric
    transforms as the image (as segmentation, i.e. nearest).

    Inference (``is_train=False``): like ``DatasetMapper`` - ``image``, ``height``,
    ``width``, ``file_name``, ``image_id`` ...; annotations are dropped, nothing else read.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        label_space: Optional[PanopticLabelSpace] = None,
    ):
        if is_train and label_space is None:
            raise ValueError("PanopticDatasetMapper(is_train=True) needs a label_space")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.label_space = label_space
        mode = "training" if is_train else "inference"
        logger.info(f"[PanopticDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augs = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        label_space = None
        for name in names:
            meta = MetadataCatalog.get(name)
            if not meta.get("thing_dataset_id_to_contiguous_id"):
                continue
            space = PanopticLabelSpace.from_metadata(meta)
            if label_space is None:
                label_space = space
            elif space != label_space:
                raise ValueError(
                    f"Datasets {label_space.dataset_name!r} and {name!r} have different "
                    "panoptic label spaces; they cannot be mixed in one mapper"
                )
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "label_space": label_space,
        }

    # ------------------------------------------------------------------ helpers
    def _panoptic(self, dataset_dict, image):
        where = f"image {dataset_dict.get('image_id', dataset_dict['file_name'])!r} " + (
            f"({dataset_dict['pan_seg_file_name']})"
        )
        space = self.label_space
        pan_ids = read_panoptic_png(dataset_dict["pan_seg_file_name"])
        if pan_ids.shape != image.shape[:2]:
            raise ValueError(
                f"{where}: panoptic PNG size {pan_ids.shape[::-1]} (w, h) differs from the "
                f"image size {image.shape[1::-1]} ({dataset_dict['file_name']})"
            )
        ids, sem, isthing, crowd, cls = _segment_tables(dataset_dict["segments_info"], space, where)
        index = _segment_index(pan_ids, ids, where)
        n = len(ids)
        lut = np.concatenate([[IGNORE_LABEL], sem]).astype(np.int64)
        # sem_seg for augmentations that look at it (e.g. CategoryAreaConstraint crops)
        sem_for_aug = lut[index].astype(np.uint8) if space.num_stuff <= 254 else None
        # Segment index as uint8 (<= 255 segments) or as 3 uint8 channels (like the PNG
        # itself): both go through PIL's nearest resize, exactly like Detectron2's
        # DatasetMapper treats a uint8 sem_seg (a float map would take another code path).
        if n <= 255:
            index = index.astype(np.uint8)
        else:
            index = np.stack([(index >> s) & 255 for s in (0, 8, 16)], axis=-1).astype(np.uint8)

        aug_input = _PanopticAugInput(image, sem_seg=sem_for_aug, pan_index=index)
        transforms = self.augmentations(aug_input)
        image, index = aug_input.image, np.asarray(aug_input.pan_index)
        if index.ndim == 3:
            index = index.astype(np.int64)
            index = index[..., 0] + (index[..., 1] << 8) + (index[..., 2] << 16)
        else:
            index = index.astype(np.int64)
        h, w = image.shape[:2]
        if index.shape != (h, w):
            raise RuntimeError(f"{where}: transformed panoptic map {index.shape} != image {(h, w)}")

        sem_seg = lut[index]
        keep = np.flatnonzero(isthing & ~crowd)
        if len(keep):
            present = np.bincount(index.reshape(-1), minlength=n + 1)[keep + 1] > 0
            keep = keep[present]
        masks = index[None] == (keep + 1)[:, None, None]  # (K, h, w) bool
        boxes = np.zeros((len(keep), 4), dtype=np.float32)
        if len(keep):
            rows, cols = masks.any(axis=2), masks.any(axis=1)
            boxes[:, 0] = cols.argmax(axis=1)
            boxes[:, 1] = rows.argmax(axis=1)
            boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
            boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.from_numpy(boxes))
        instances.gt_classes = torch.as_tensor(cls[keep], dtype=torch.int64)
        instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(masks)))
        return image, transforms, instances, torch.as_tensor(sem_seg, dtype=torch.int64)

    def _separated_files(self, dataset_dict, image):
        """Detectron2's builtin ``*_panoptic_separated`` dicts: instance annotations
        (polygons) + a preprocessed separated semantic PNG."""
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            path = dataset_dict.pop("sem_seg_file_name")
            if not PathManager.isfile(path):
                raise FileNotFoundError(f"Semantic segmentation PNG not found: {path}")
            sem_seg_gt = utils.read_image(path, "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        h, w = image.shape[:2]
        annos = [
            utils.transform_instance_annotations(obj, transforms, (h, w))
            for obj in dataset_dict.pop("annotations", [])
            if obj.get("iscrowd", 0) == 0
        ]
        for obj in annos:
            try:
                obj["category_id"] = self.label_space.contiguous_to_internal(
                    obj["category_id"], True
                )
            except ValueError as e:
                raise ValueError(f"{e} (annotation of {dataset_dict['file_name']})") from None
        instances = utils.annotations_to_instances(annos, (h, w), mask_format="bitmask")
        if not instances.has("gt_masks"):
            instances.gt_masks = BitMasks(torch.zeros((len(instances), h, w), dtype=torch.bool))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances = utils.filter_empty_instances(instances)
        sem = None if sem_seg_gt is None else torch.as_tensor(sem_seg_gt.astype("long"))
        return image, transforms, instances, sem

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image's dict in Detectron2 format.
        Returns:
            dict: the input's keys plus ``image`` and, in training, ``instances`` and
            ``sem_seg``; ``annotations``, ``segments_info`` and ``sem_seg_file_name`` removed.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        if not self.is_train:
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            image = aug_input.image
            for k in ("annotations", "segments_info", "sem_seg_file_name"):
                dataset_dict.pop(k, None)
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return dataset_dict

        if "pan_seg_file_name" in dataset_dict and "segments_info" in dataset_dict:
            image, _, instances, sem_seg = self._panoptic(dataset_dict, image)
            dataset_dict.pop("sem_seg_file_name", None)
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict or "sem_seg_file_name" in dataset_dict:
            image, _, instances, sem_seg = self._separated_files(dataset_dict, image)
        else:
            raise ValueError(
                f"{dataset_dict['file_name']}: training dict has neither 'pan_seg_file_name' + "
                "'segments_info' nor 'annotations'/'sem_seg_file_name'"
            )
        dataset_dict.pop("segments_info", None)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["instances"] = instances
        if sem_seg is not None:
            dataset_dict["sem_seg"] = sem_seg
        return dataset_dict
