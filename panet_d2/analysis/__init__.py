# -*- coding: utf-8 -*-
"""FLOP counts of PANet's ops for Detectron2's ``FlopCountAnalysis`` (``flops.py``)."""

from .flops import *  # noqa: F401, F403
from .flops import __all__  # noqa: F401
