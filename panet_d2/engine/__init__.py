# -*- coding: utf-8 -*-
"""
The engine: :class:`PANetTrainer`, Detectron2's DefaultTrainer for panet_d2 (``trainer.py``);
exact ``--resume`` (``resume.py``); every check before a run (``checks.py``); what the entry
points share: config loading, CPU fallback, one-line errors (``cli.py``).
"""

from .cli import adapt_config_to_machine, load_config, one_line_errors
from .resume import ResumableSampler, ResumeStateHook, preserved_rng_states
from .trainer import PANetTrainer, uses_panoptic_mapper

__all__ = [k for k in globals() if k[0] != "_" and k not in ("checks", "cli", "resume", "trainer")]
