"""Datasets and the panoptic dataset mapper. Importing this registers the datasets (names only)."""

from .coco_panoptic import coco_panoptic_separated_metadata, register_coco_panoptic_panet
from .label_space import PanopticLabelSpace, label_space_of
from .panoptic_mapper import PanopticDatasetMapper, read_panoptic_png
from .synthetic import generate_synthetic_dataset, register_synthetic_dataset

register_synthetic_dataset()  # panet_synth_{train,val}{,_panoptic,_sem_seg}

_MODULES = ("coco_panoptic", "image_io", "label_space", "panoptic_mapper", "synthetic")
__all__ = [k for k in globals() if k[0] != "_" and k not in _MODULES]
