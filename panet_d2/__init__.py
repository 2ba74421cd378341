# -*- coding: utf-8 -*-
"""
PANet (Path Aggregation Network, CVPR 2018) and panoptic PANet as a Detectron2 project.

Importing this package registers every component with Detectron2's registries.
"""

from .config import add_panet_config
from . import modeling as _  # only registration (backbone, heads, meta-architecture)
from .modeling import *  # noqa: F401, F403
from .checkpoint import PANetCheckpointer
from . import analysis as _  # noqa: F811  only registration (FLOP counts of PANet's ops)
from . import data as _  # noqa: F811  only registration (datasets)

# installs the cityscapesscripts import alias that Detectron2's Cityscapes loaders and evaluators
# need (see panet_d2/evaluation.py)
from . import evaluation as _  # noqa: F811

__version__ = "0.1.0"
