"""The engine: PANetTrainer, exact --resume, the checks before a run, what entry points share."""

from .cli import adapt_config_to_machine, one_line_errors
from .resume import ResumableSampler, ResumeStateHook, preserved_rng_states
from .trainer import PANetTrainer, uses_panoptic_mapper

__all__ = [k for k in globals() if k[0] != "_" and k not in ("checks", "cli", "resume", "trainer")]
