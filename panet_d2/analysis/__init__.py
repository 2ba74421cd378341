# -*- coding: utf-8 -*-
"""Analysis tools: FLOP counts of PANet's ops (``flops.py``) and Fig. 3 (``level_usage.py``)."""

from .flops import FLOP_HANDLES, flop_count_analysis
from .flops import embedding_bag_flop_jit, reduction_flop_jit, roi_align_flop_jit
from .level_usage import BRANCHES, TIE_RULES, LevelUsage, count_level_sources

__all__ = [k for k in globals() if k[0] != "_" and k not in ("flops", "level_usage")]
