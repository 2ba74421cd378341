# -*- coding: utf-8 -*-
"""The project's error types, each message one line naming the bad value and what is allowed."""

__all__ = [
    "InputError",
    "ConfigError",
    "DatasetError",
    "ImageLoadError",
    "CheckpointError",
    "TrainingDivergedError",
    "check_choice",
]


class InputError(Exception):
    """An error in the inputs of a run (config, dataset, image, checkpoint); ``train_net.py`` and
    ``demo.py`` print its message as one line, without a traceback."""


class ConfigError(InputError, ValueError):
    """A config value that is not allowed; the message names the key, the value and the choices."""


class DatasetError(InputError, ValueError):
    """A dataset that is not registered, whose files are missing, or that does not load."""


class ImageLoadError(InputError, OSError):
    """An image (or its segmentation PNG) that is missing or cannot be read."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that does not exist, cannot be read, does not fit the model or be saved."""


class TrainingDivergedError(FloatingPointError):
    """A loss or weight became NaN or inf (Detectron2's type); ``last_checkpoint``: the path of
    the last checkpoint written before it, or None."""

    def __init__(self, message, last_checkpoint=None):
        super().__init__(message)
        self.last_checkpoint = last_checkpoint


def check_choice(key, value, allowed):
    """Returns ``value`` if it is one of ``allowed``, else raises :class:`ConfigError`."""
    if value not in allowed:
        raise ConfigError(
            "Invalid config value {}={!r}; allowed values are: {}.".format(
                key, value, ", ".join(repr(a) for a in allowed)
            )
        )
    return value
