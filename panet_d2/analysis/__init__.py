# -*- coding: utf-8 -*-
"""FLOP counts of PANet's ops for Detectron2's ``FlopCountAnalysis`` (``flops.py``)."""

from .flops import (
    FLOP_HANDLES,
    embedding_bag_flop_jit,
    flop_count_analysis,
    reduction_flop_jit,
    roi_align_flop_jit,
)

__all__ = [k for k in globals() if k[0] != "_" and k != "flops"]
