"""The project's error types, each message one line naming the bad value and what is allowed."""


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
        allowed = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"Invalid config value {key}={value!r}; allowed values are: {allowed}.")
    return value


def os_error_cause(e, errnos=None):
    """The first OSError (errno in ``errnos``, if given) in ``e``'s chain of causes, else None."""
    for _ in range(8):  # the chain of causes and contexts, not a cycle
        if isinstance(e, OSError) and (errnos is None or e.errno in errnos):
            return e
        e = getattr(e, "__cause__", None) or getattr(e, "__context__", None)
    return None
