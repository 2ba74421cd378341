"""Datasets and the panoptic dataset mapper. Importing this registers the datasets (names only)."""

from . import coco_panoptic as _  # only registration: coco_2017_{train,val}_panoptic_panet
from .coco_panoptic import coco_panoptic_separated_metadata, register_coco_panoptic_panet
from .label_space import PanopticLabelSpace, label_space_of
from .panoptic_mapper import PanopticDatasetMapper, read_panoptic_png
from .synthetic import generate_synthetic_dataset, register_synthetic_dataset

register_synthetic_dataset()  # panet_synth_{train,val}{,_panoptic,_sem_seg}

__all__ = [
    "PanopticDatasetMapper",
    "PanopticLabelSpace",
    "coco_panoptic_separated_metadata",
    "generate_synthetic_dataset",
    "label_space_of",
    "read_panoptic_png",
    "register_coco_panoptic_panet",
    "register_synthetic_dataset",
]
