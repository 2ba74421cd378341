"""PANet and panoptic PANet as a Detectron2 project. Importing it registers its components and
datasets with Detectron2 and changes nothing else (tests/test_import_effects.py)."""

from .compat import quiet_jit_script_deprecation

with quiet_jit_script_deprecation():  # fvcore.nn's import, through Detectron2's
    from . import data as _  # noqa: F811  only registration (datasets)
    from .checkpoint import PANetCheckpointer
    from .config import add_panet_config
    from .modeling import *  # noqa: F401, F403

__version__ = "0.1.0"
