"""Evaluation: the evaluators of the test datasets (:func:`build_evaluator`)."""

from .build import EVALUATORS, SEM_SEG_TYPES, build_evaluator, check_evaluator_type
from .build import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .panoptic import PanopticEvaluator, PanopticToSemSeg, meta_architecture
from .panoptic import PanopticLabelSpace, panoptic_to_dataset_classes

__all__ = [k for k in globals() if k[0] != "_" and k not in ("build", "panoptic")]
