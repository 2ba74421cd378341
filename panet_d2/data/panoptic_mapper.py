"""Detectron2's DatasetMapper that also makes the training targets from COCO panoptic PNGs."""

import copy
import logging

import numpy as np
import torch
from panopticapi.utils import id2rgb, rgb2id

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Boxes, Instances

from ..errors import DatasetError, ImageLoadError
from .image_io import ImageDatasetMapper
from .label_space import PanopticLabelSpace

logger = logging.getLogger(__name__)

# DatasetMapper's options for the instance targets: masks as BitMasks, with tight boxes
_MASKS = dict(use_instance_mask=True, instance_mask_format="bitmask", recompute_boxes=True)


def read_panoptic_png(path):
    """(H, W) int32 segment ids of a COCO panoptic PNG (panopticapi's ``rgb2id``)."""
    try:
        return rgb2id(utils.read_image(path, "RGB"))
    except Exception as e:  # missing, unreadable or not an image
        raise ImageLoadError(f"Cannot read panoptic PNG {path}: {e}") from e


def segment_index(pan_ids, ids):
    """For the (H, W) segment ids ``pan_ids`` of a PNG and the sorted int64 (N,) ``ids`` of its
    segments_info: int64 (H, W) 1 + the position in ``ids`` of each pixel's id (0: none), the
    ``ids`` not in the PNG (list), and the PNG's ids but 0 not in ``ids`` (list)."""
    flat = pan_ids.reshape(-1).astype(np.int64)
    pos = np.searchsorted(ids, flat)
    hit = np.append(ids, -1)[pos] == flat
    index = np.where(hit, pos + 1, 0)
    missing = ids[np.bincount(index, minlength=len(ids) + 1)[1:] == 0].tolist()
    unknown = np.unique(flat[~hit & (flat != 0)]).tolist()
    return index.reshape(pan_ids.shape), missing, unknown


def warn_segment_mismatch(where, missing, unknown, missed="", unlisted="void"):
    """Warns of the ids of segments_info ``missing`` from the PNG (``missed``: what that means)
    and the PNG's ids ``unknown`` to segments_info (``unlisted``: what those pixels become)."""
    if missing:
        msg = f"{where}: segment id(s) {missing[:10]} of segments_info are not in the PNG{missed}"
        logger.warning(msg)
    if unknown:
        msg = f"{where}: PNG segment id(s) {unknown[:10]} not in segments_info: {unlisted}"
        logger.warning(msg)


class PanopticDatasetMapper(ImageDatasetMapper):
    """:class:`ImageDatasetMapper` (instance masks as ``BitMasks`` with tight boxes) that in
    training makes the targets of a panoptic dict (``pan_seg_file_name``, ``segments_info``) from
    its PNG: ``instances`` (non-crowd things that survive the augmentation) and ``sem_seg`` (int64
    (H, W): things 0, stuff 1..S, void ``ignore_label``). Other dicts: thing ids mapped to ours."""

    @configurable
    def __init__(self, is_train, *, augmentations, image_format, label_space=None, **kwargs):
        """``label_space`` (:class:`PanopticLabelSpace`): needed in training; ``ignore_label``:
        void's label (MODEL.SEM_SEG_HEAD.IGNORE_VALUE, default 255)."""
        self.ignore_label = kwargs.pop("ignore_label", 255)
        if is_train and label_space is None:
            raise ValueError("PanopticDatasetMapper(is_train=True) needs a label_space")
        kwargs = {**_MASKS, **kwargs}
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, **kwargs)
        self.label_space = label_space

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret.update(_MASKS, ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, label_space=None)
        for name in cfg.DATASETS.TRAIN if is_train else ():
            try:
                space = PanopticLabelSpace.from_metadata(MetadataCatalog.get(name))
            except ValueError as e:
                raise DatasetError(
                    f"{e}. PanopticDatasetMapper trains on panoptic datasets only: use "
                    f"Detectron2's DatasetMapper for {name!r}."
                ) from None
            if ret["label_space"] not in (None, space):
                raise DatasetError(
                    f"Datasets {ret['label_space'].dataset_name!r} and {name!r} have different "
                    "panoptic label spaces; they cannot be mixed in one mapper"
                )
            ret["label_space"] = space
        return ret

    def __call__(self, dataset_dict):
        panoptic = "pan_seg_file_name" in dataset_dict and "segments_info" in dataset_dict
        if not (self.is_train and panoptic):
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        where = f"image {dataset_dict.get('image_id', dataset_dict['file_name'])!r}"
        where += f" ({dataset_dict['pan_seg_file_name']})"
        pan_ids = read_panoptic_png(dataset_dict["pan_seg_file_name"])
        if pan_ids.shape != image.shape[:2]:
            raise DatasetError(
                f"{where}: panoptic PNG size {pan_ids.shape[::-1]} (w, h) differs from the "
                f"image size {image.shape[1::-1]} ({dataset_dict['file_name']})"
            )
        rows = []
        for s in dataset_dict["segments_info"]:
            try:
                isthing, internal = self.label_space.segment_to_internal(s)
            except ValueError as e:
                raise DatasetError(f"{e} (segment {s.get('id')} of {where})") from None
            instance = isthing and not s.get("iscrowd", 0)
            rows.append((int(s["id"]), 0 if isthing else internal, internal if instance else -1))
        # int64 (N,) per sorted segment: id, semantic label, model class of a non-crowd thing or -1
        ids, sem, cls = np.array(sorted(rows), dtype=np.int64).reshape(-1, 3).T
        if (np.diff(ids) == 0).any():
            raise DatasetError(f"duplicate segment id {ids[1:][np.diff(ids) == 0][0]} in {where}")
        index, missing, unknown = segment_index(pan_ids, ids)
        warn_segment_mismatch(where, missing, unknown)
        lut = np.concatenate([[self.ignore_label], sem])
        # sem_seg for augmentations that read it (e.g. CategoryAreaConstraint crops)
        sem_seg = lut[index].astype(np.uint8) if 0 <= lut.min() <= lut.max() <= 255 else None
        aug_input, transforms = self._augment(dataset_dict, image, sem_seg)
        # the index goes through the transforms as a uint8 segmentation (3 channels if > 255)
        if len(sem) <= 255:
            index = transforms.apply_segmentation(index.astype(np.uint8)).astype(np.int64)
        else:  # as the RGB of a panoptic PNG
            index = rgb2id(transforms.apply_segmentation(id2rgb(index))).astype(np.int64)
        present = np.bincount(index.reshape(-1), minlength=len(sem) + 1)[1:] > 0
        keep = np.flatnonzero((cls >= 0) & present)
        masks = torch.from_numpy(index[None] == keep[:, None, None] + 1)  # (K, H, W)
        instances = Instances(index.shape, gt_masks=BitMasks(masks))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.as_tensor(cls[keep])
        for key in ("segments_info", "sem_seg_file_name", "annotations"):
            dataset_dict.pop(key, None)
        dataset_dict.update(instances=instances, sem_seg=torch.as_tensor(lut[index]))
        return dataset_dict

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        # thing ids mapped to the model's; without a non-crowd annotation, empty targets
        annos = [a for a in dataset_dict["annotations"] if not a.get("iscrowd", 0)]
        for a in annos:
            try:
                a["category_id"] = self.label_space.contiguous_to_internal(a["category_id"], True)
            except ValueError as e:
                raise DatasetError(f"{e} (annotation of {dataset_dict['file_name']})") from None
        if annos:
            dataset_dict["annotations"] = annos
            return super()._transform_annotations(dataset_dict, transforms, image_shape)
        dataset_dict.pop("annotations")
        dataset_dict["instances"] = Instances(
            image_shape,
            gt_boxes=Boxes(torch.zeros((0, 4))),
            gt_classes=torch.zeros((0,), dtype=torch.int64),
            gt_masks=BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool)),
        )
