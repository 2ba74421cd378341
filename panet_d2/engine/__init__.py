# -*- coding: utf-8 -*-
"""
The engine: :class:`PANetTrainer`, Detectron2's DefaultTrainer for panet_d2 (``trainer.py``),
and exact ``--resume`` (``resume.py``).
"""

from .resume import ResumableSampler, ResumeStateHook, preserved_rng_states
from .trainer import PANetTrainer, adapt_config_to_machine, uses_panoptic_mapper

__all__ = [k for k in globals() if k[0] != "_" and k not in ("resume", "trainer")]
