# -*- coding: utf-8 -*-
"""
The project's error types and the config checks that raise them: one line naming the bad key,
value or file and what is allowed.
"""

__all__ = [
    "InputError",
    "ConfigError",
    "DatasetError",
    "ImageLoadError",
    "CheckpointError",
    "check_choice",
]


class InputError(Exception):
    """
    An error in the inputs of a run (config, dataset, image, checkpoint) whose message says what
    is wrong and where. ``train_net.py`` and ``demo.py`` print it as one line, without a traceback.
    """


class ConfigError(InputError, ValueError):
    """A config value that is not allowed; the message names the key, the value and the choices."""


class DatasetError(InputError, ValueError):
    """A dataset that is not registered, whose files are missing, or that does not load."""


class ImageLoadError(InputError, OSError):
    """An image (or its segmentation PNG) that is missing or cannot be read."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that does not exist, cannot be read, or does not fit the model."""


def check_choice(key, value, allowed):
    """
    Returns ``value`` if it is one of ``allowed``; else raises :class:`ConfigError` naming the
    config key, the bad value and the allowed values.
    """
    if value not in allowed:
        raise ConfigError(
            "Invalid config value {}={!r}; allowed values are: {}.".format(
                key, value, ", ".join(repr(a) for a in allowed)
            )
        )
    return value
