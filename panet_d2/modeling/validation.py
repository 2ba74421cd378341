"""Checks of constructor arguments shared by the backbone and the heads (one ConfigError line)."""

import math
from typing import Dict, Sequence

from detectron2.layers import ShapeSpec, get_norm

from ..errors import ConfigError


def check_norm(key: str, norm):
    """Raise :class:`ConfigError` unless ``norm`` is a norm spec Detectron2's ``get_norm`` takes."""
    if norm is None or callable(norm) or norm == "":
        return
    try:
        get_norm(norm, 32)
    except (KeyError, TypeError):
        raise ConfigError(
            "Invalid config value {}={!r}; allowed: '' (no norm), a norm name of Detectron2's "
            "get_norm ('GN', 'BN', 'SyncBN', 'naiveSyncBN', 'nnSyncBN', 'FrozenBN', 'LN') or a "
            "callable returning an nn.Module.".format(key, norm)
        ) from None


def check_in_features(
    key: str, features: Sequence[str], input_shape: Dict[str, ShapeSpec], source: str, pyramid=False
):
    """Raise :class:`ConfigError` unless ``features`` is a non-empty list of features of
    ``input_shape`` (of ``source``); with ``pyramid``, consecutive pyramid levels, finest first."""
    features, names = list(features), ", ".join(input_shape)
    for f in features or [None]:
        if f not in input_shape:
            raise ConfigError(
                f"{key}={features}: {f!r} is not a feature of {source}; its features are: {names}."
            )
    strides = [input_shape[f].stride for f in features]
    levels = [math.log2(s) for s in strides]
    all_strides = ", ".join(str(s.stride) for s in input_shape.values())
    if pyramid and levels != [levels[0] + i for i in range(len(levels))]:
        raise ConfigError(
            f"{key}={features}: RoI pooling (and adaptive feature pooling) takes consecutive "
            f"pyramid levels, finest first; these have strides {strides}. Allowed: consecutive "
            f"features of {names} (strides {all_strides}), finest first."
        )
