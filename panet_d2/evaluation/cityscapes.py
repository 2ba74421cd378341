# -*- coding: utf-8 -*-
"""Detectron2's Cityscapes evaluators with the fixes of :mod:`panet_d2.compat`."""

from detectron2.evaluation import cityscapes_evaluation as d2_cityscapes
from detectron2.utils.file_io import PathManager

from ..compat import cityscapes_api_alias, cityscapesscripts_fixes

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]


class CityscapesInstanceEvaluator(d2_cityscapes.CityscapesInstanceEvaluator):
    """Detectron2's, with :func:`~panet_d2.compat.cityscapes_api_alias` and
    :func:`~panet_d2.compat.cityscapesscripts_fixes`; cityscapesscripts' ``matches.json`` is
    written into ``output_dir`` (default: the temporary folder of the predictions)."""

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
    """Detectron2's, with :func:`~panet_d2.compat.cityscapes_api_alias` and
    :func:`~panet_d2.compat.cityscapesscripts_fixes`."""

    def process(self, inputs, outputs):
        with cityscapes_api_alias():
            super().process(inputs, outputs)

    def evaluate(self):
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as module

        with cityscapes_api_alias(), cityscapesscripts_fixes(module):
            return super().evaluate()
