"""PANet's model zoo, as :mod:`detectron2.model_zoo`: configs of ``configs/`` by relative path."""

from .model_zoo import (
    RELEASE_MODELS,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    list_configs,
)

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "list_configs"]
__all__ += ["RELEASE_MODELS"]
