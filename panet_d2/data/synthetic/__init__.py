# -*- coding: utf-8 -*-
"""The generated dataset "panet_synth": drawing (draw), files (write), registration (register)."""

from . import draw, register, write
from .draw import *  # noqa: F401, F403
from .register import *  # noqa: F401, F403
from .write import *  # noqa: F401, F403

__all__ = draw.__all__ + write.__all__ + register.__all__
