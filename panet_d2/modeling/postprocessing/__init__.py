"""Post-processing: the panoptic merge (the rules of Detectron2's Panoptic FPN)."""

from .panoptic_merge import combine_semantic_and_instance_outputs
