"""The project's error types, each message one line naming the bad value and what is allowed, and
the checks of config values shared by the model's parts."""

import math
import os
import re
from typing import Dict, Sequence

import fvcore
import torch

import detectron2
from detectron2.layers import ShapeSpec, get_norm


class InputError(Exception):
    """An error in a run's inputs (config, dataset, image, checkpoint): scripts print one line."""


class ConfigError(InputError, ValueError):
    """A config value that is not allowed; the message names the key, the value and the choices."""


class DatasetError(InputError, ValueError):
    """A dataset that is not registered, whose files are missing, or that does not load."""


class ImageLoadError(InputError, OSError):
    """An image (or its segmentation PNG) that is missing or cannot be read."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that does not exist, cannot be read, does not fit the model or be saved."""


class TrainingDivergedError(FloatingPointError):
    """A loss or weight became NaN or inf; ``last_checkpoint``: the last one saved, or None."""

    def __init__(self, message, last_checkpoint=None):
        super().__init__(message)
        self.last_checkpoint = last_checkpoint


class NonFiniteOutputError(InputError, FloatingPointError):
    """NaN or inf that the model computed at inference (weights that overflow): nothing returned."""


# the channels of each input format Detectron2 reads (INPUT.FORMAT, a LazyConfig's input_format)
INPUT_CHANNELS = {"BGR": 3, "RGB": 3, "YUV-BT.601": 3, "L": 1}
# RoIAlign's longest output side (1000 RoIs of 256 channels at 64 x 64: 4 GB; docs/reliability.md)
MAX_POOLER_RESOLUTION = 64


def check_finite(what: str, x: torch.Tensor):
    """Raise :class:`NonFiniteOutputError` if ``x`` holds NaN or inf (not while traced)."""
    # the sum first, 20 times faster than isfinite (in float32: a float16 sum overflows)
    if torch.jit.is_tracing() or bool(x.sum(dtype=torch.float32).isfinite()):
        return
    bad = int((~x.isfinite()).sum())
    if bad:
        raise NonFiniteOutputError(
            f"{what} hold NaN or inf ({bad} of {x.numel()} values) on this input: the model's "
            "weights (MODEL.WEIGHTS, or those training reached) give numbers that overflow, or the "
            "input holds NaN or inf; no outputs are made from them."
        )


def check_choice(key, value, allowed):
    """Returns ``value`` if it is one of ``allowed``, else raises :class:`ConfigError`."""
    if value not in allowed:
        allowed = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"Invalid config value {key}={value!r}; allowed values are: {allowed}.")
    return value


def check_fractions(key, value):
    """Raise :class:`ConfigError` unless ``value`` is a number in [0, 1] (a list: increasing)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(0 <= v <= 1 for v in values) or values != sorted(values):
        what = "a number in [0, 1]" if value is values[0] else "numbers in [0, 1], increasing"
        raise ConfigError(f"{key}={value!r}: must be {what}.")


def check_device(key, device):
    """Raise :class:`ConfigError` unless ``device`` is 'cpu' ('cpu:0'), 'cuda' or 'cuda:N' (parsed,
    not made: no CUDA context)."""
    if not re.fullmatch(r"cpu(:0)?|cuda(:\d+)?", str(device)):
        raise ConfigError(
            f"{key}={device!r}: panet_d2 runs on 'cpu' (or 'cpu:0'), 'cuda' or 'cuda:N' (GPU N)."
        )


def os_error_cause(e, errnos=None):
    """The first OSError (errno in ``errnos``, if given) in ``e``'s chain of causes, else None."""
    for _ in range(8):  # the chain of causes and contexts, not a cycle
        if isinstance(e, OSError) and (errnos is None or e.errno in errnos):
            return e
        e = getattr(e, "__cause__", None) or getattr(e, "__context__", None)
    return None


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
    ``input_shape`` (of ``source``); with ``pyramid`` (what reads them, e.g. "RoI pooling"),
    consecutive pyramid levels, finest first."""
    features, names = list(features), ", ".join(input_shape)
    if not features:
        raise ConfigError(f"{key}=[]: list one feature at least; {source} has: {names}.")
    for f in features:
        if f not in input_shape:
            raise ConfigError(
                f"{key}={features}: {f!r} is not a feature of {source}; its features are: {names}."
            )
    strides = [input_shape[f].stride for f in features]
    levels = [math.log2(s) for s in strides]
    all_strides = ", ".join(str(s.stride) for s in input_shape.values())
    if pyramid and levels != [levels[0] + i for i in range(len(levels))]:
        raise ConfigError(
            f"{key}={features}: {pyramid} takes consecutive pyramid levels, finest first; these "
            f"have strides {strides}. Allowed: consecutive "
            f"features of {names} (strides {all_strides}), finest first."
        )


# the libraries whose refusals of a config's values panet_d2 says in one line
LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep for m in (detectron2, fvcore, torch))
LIBRARIES += (os.path.dirname(os.path.abspath(__file__)) + os.sep,)  # panet_d2


def raised_in_libraries(e):
    """Where ``e`` was raised ("file:line"), if the innermost frame of its traceback is in a file of
    :data:`LIBRARIES`; else None (e.g. a user's own module)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = tb and os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not path or not path.startswith(LIBRARIES):
        return None
    root = next(r for r in LIBRARIES if path.startswith(r))
    return f"{os.path.relpath(path, os.path.dirname(root.rstrip(os.sep)))}:{tb.tb_lineno}"
