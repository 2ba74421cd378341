"""FLOP counts of PANet's ops for Detectron2's ``FlopCountAnalysis`` (``flops.py``)."""

from .flops import FLOP_HANDLES, flop_count_analysis
