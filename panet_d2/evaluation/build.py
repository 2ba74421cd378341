"""The evaluator of a test dataset, chosen by its metadata's ``evaluator_type`` from a table."""

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, LVISEvaluator, SemSegEvaluator
from detectron2.evaluation import cityscapes_evaluation as d2_cityscapes
from detectron2.evaluation.pascal_voc_evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils.file_io import PathManager

from ..compat import cityscapes_api_alias, cityscapesscripts_fixes
from ..data.image_io import check_sem_seg_labels
from ..errors import DatasetError
from .panoptic import PanopticEvaluator, PanopticToSemSeg, panoptic_to_dataset_classes

logger = logging.getLogger(__name__)


class CityscapesInstanceEvaluator(d2_cityscapes.CityscapesInstanceEvaluator):
    """Detectron2's, with the fixes of :mod:`panet_d2.compat`; cityscapesscripts' ``matches.json``
    goes to ``output_dir`` (default: the temporary folder of the predictions)."""

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name)
        self._output_dir = output_dir

    def process(self, inputs, outputs):
        with cityscapes_api_alias():
            super().process(inputs, outputs)

    def evaluate(self):
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as module

        folder = self._output_dir or self._temp_dir
        PathManager.mkdirs(folder)
        with cityscapes_api_alias(), cityscapesscripts_fixes(module, json_folder=folder):
            return super().evaluate()


class CityscapesSemSegEvaluator(d2_cityscapes.CityscapesSemSegEvaluator):
    """Detectron2's, with the fixes of :mod:`panet_d2.compat`."""

    def process(self, inputs, outputs):
        with cityscapes_api_alias():
            super().process(inputs, outputs)

    def evaluate(self):
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as module

        with cityscapes_api_alias(), cityscapesscripts_fixes(module):
            return super().evaluate()


def _load_checked_labels(dataset_name, filename, dtype=None):
    """Detectron2's ground-truth reader of :class:`SemSegEvaluator`, the labels checked against
    the dataset's ``stuff_classes`` and ``ignore_label`` (others would be miscounted silently)."""
    labels = load_image_into_numpy_array(filename, dtype=dtype)
    meta = MetadataCatalog.get(dataset_name)
    n = len(meta.stuff_classes)
    what = f"dataset {dataset_name!r} ({n} stuff_classes)"
    check_sem_seg_labels(labels, filename, n, meta.get("ignore_label", None), what)
    return labels


def _sem_seg(dataset_name, output_dir):
    """Detectron2's :class:`SemSegEvaluator`, the labels of its ground truth checked."""
    loader = functools.partial(_load_checked_labels, dataset_name)
    return SemSegEvaluator(dataset_name, output_dir=output_dir, sem_seg_loading_fn=loader)


def _coco_panoptic(dataset_name, output_dir):
    """PQ; box and mask AP with an instances json; mIoU when the records have semantic PNGs."""
    evaluators = [PanopticEvaluator(dataset_name, output_dir)]
    meta = MetadataCatalog.get(dataset_name)
    things = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    if meta.get("json_file", None) and things == list(range(len(things))):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_dir))
    else:
        logger.info(
            "No box/mask AP on {!r}: COCOEvaluator needs an instances json (metadata json_file) "
            "and thing classes 0..T-1.".format(dataset_name)
        )
    records = DatasetCatalog.get(dataset_name)
    if records and "sem_seg_file_name" in records[0]:
        evaluators.append(_sem_seg(dataset_name, output_dir))
    return DatasetEvaluators(evaluators)


# evaluator_type -> factory(dataset_name, output_dir) of the dataset's evaluator
EVALUATORS = {
    "coco": lambda name, out: COCOEvaluator(name, output_dir=out),
    "coco_panoptic_seg": _coco_panoptic,
    "sem_seg": _sem_seg,
    "cityscapes_instance": lambda name, out: CityscapesInstanceEvaluator(name, out),
    "cityscapes_sem_seg": lambda name, out: CityscapesSemSegEvaluator(name),
    "cityscapes_panoptic_seg": PanopticEvaluator,
    "pascal_voc": lambda name, out: PascalVOCDetectionEvaluator(name),
    "lvis": lambda name, out: LVISEvaluator(name, output_dir=out),
}
# evaluator_type -> the tasks (result names) its evaluator can give ("segm" with MASK_ON,
# "keypoints" with KEYPOINT_ON)
TASKS = {"coco": ("bbox", "segm", "keypoints"), "lvis": ("bbox", "segm")}
TASKS.update(coco_panoptic_seg=("panoptic_seg", "bbox", "segm", "sem_seg"), pascal_voc=("bbox",))
TASKS.update(sem_seg=("sem_seg",), cityscapes_sem_seg=("sem_seg",), cityscapes_instance=("segm",))
TASKS.update(cityscapes_panoptic_seg=("panoptic_seg",))
# the evaluator types that read a model's "sem_seg" as the dataset's classes
SEM_SEG_TYPES = ("sem_seg", "cityscapes_sem_seg")


def check_evaluator_type(dataset_name):
    """A registered dataset's ``evaluator_type``; a :class:`DatasetError` if EVALUATORS has none."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATORS:
        found = f"evaluator_type {evaluator_type!r}" if evaluator_type else "no evaluator_type"
        raise DatasetError(
            f"No evaluator for the test dataset {dataset_name!r}: it has {found} in its metadata. "
            f"Supported evaluator types: {', '.join(EVALUATORS)}."
        )
    return evaluator_type


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator of a test dataset by its ``evaluator_type``, writing to ``output_folder``
    (default ``<OUTPUT_DIR>/inference``); a semantic evaluator of a panoptic model is wrapped in
    :class:`PanopticToSemSeg` where the classes differ."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = check_evaluator_type(dataset_name)
    evaluator = EVALUATORS[evaluator_type](dataset_name, output_folder)
    conversion = evaluator_type in SEM_SEG_TYPES and panoptic_to_dataset_classes(cfg, dataset_name)
    if conversion:  # (stuff_to_class, thing_to_class), or None
        classes = MetadataCatalog.get(dataset_name).stuff_classes
        evaluator = PanopticToSemSeg(evaluator, *conversion, num_classes=len(classes))
    return evaluator
