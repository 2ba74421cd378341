"""Exact ``--resume``: random generator states in checkpoints, a sampler that skips."""

import contextlib
import itertools
import logging
import os
import random

import numpy as np
import torch
import torch.utils.data as torchdata

import detectron2.utils.comm as comm
from detectron2.engine import HookBase

from ..errors import CheckpointError

logger = logging.getLogger(__name__)


def check_last_checkpoint(checkpointer):
    """The checkpoint ``last_checkpoint`` names (None without one); a CheckpointError if absent."""
    if not checkpointer.has_checkpoint():
        return None
    last = os.path.join(checkpointer.save_dir, "last_checkpoint")
    size = os.path.getsize(last) if os.path.isfile(last) else 0
    problem = f"is {size} bytes" if size > 4096 else "is a folder" if os.path.isdir(last) else None
    try:  # fvcore reads the file whole and joins the folder and its text
        path = "" if problem else checkpointer.get_checkpoint_file()
    except UnicodeDecodeError:
        problem, path = "is not text", ""
    problem = problem or (None if os.path.basename(path) else "is empty")
    if problem:
        raise CheckpointError(
            f"--resume: {last!r} {problem}: it must be a text file naming the checkpoint to "
            "resume from (e.g. model_0004999.pth); remove it to start from MODEL.WEIGHTS."
        )
    if os.path.isfile(path):  # (a URL, joined to the folder by fvcore, is none)
        return path
    folder = checkpointer.save_dir
    found = ", ".join(sorted(n for n in os.listdir(folder) if n.endswith((".pth", ".pkl"))))
    there = f"The checkpoints in {folder!r}: {found}." if found else f"No checkpoint in {folder!r}."
    prefix = os.path.join(folder, "")  # fvcore's join of the folder and the file's text
    named = path[len(prefix) :] if "://" in path and path.startswith(prefix) else path
    named = named if "://" in path else os.path.basename(path)
    what = "does not exist"
    what = "is a URL, not a file of that folder" if "://" in path else what
    what = "is a folder" if os.path.isdir(path) else what
    raise CheckpointError(
        f"--resume: {last!r} names the checkpoint {named!r}, which {what}. {there} Write the name "
        "of the checkpoint to resume from into last_checkpoint, or remove last_checkpoint to start "
        "from MODEL.WEIGHTS."
    )


class ResumableSampler(torchdata.Sampler):
    """Wraps an (infinite) training sampler; its stream starts after ``start`` indices."""

    def __init__(self, sampler):
        self.sampler, self.start = sampler, 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)


def get_rng_states():
    """The global random generators' states, loadable with ``torch.load(weights_only=True)``."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    np_keys = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    states = {
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": [np_name, np_keys, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restores states returned by :func:`get_rng_states`."""
    py_version, py_state, py_gauss = states["python"]
    random.setstate((py_version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    np_name, np_keys, *np_rest = states["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), *np_rest))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng_states():
    """Restores the global random generators on exit (evaluation does not change training)."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


class ResumeStateHook(HookBase):
    """Saves the random generator states in every checkpoint; a resumed run skips
    ``samples_per_iter`` per iteration done in ``sampler`` and restores them (one process)."""

    def __init__(self, sampler, samples_per_iter):
        self.sampler, self.samples_per_iter, self._rng = sampler, samples_per_iter, None

    def state_dict(self):
        return {"rng": get_rng_states()}

    def load_state_dict(self, state_dict):
        self._rng = state_dict.get("rng")

    def before_train(self):
        start_iter = self.trainer.start_iter
        if start_iter > 0 and self.sampler is not None:
            self.sampler.start = start_iter * self.samples_per_iter
            logger.info(
                f"Resuming at iteration {start_iter}: the training sampler skips the "
                f"{self.sampler.start} samples already used."
            )
        if self._rng is not None and comm.get_world_size() == 1:
            set_rng_states(self._rng)
            logger.info("Restored the random generator states of the resumed checkpoint.")
        self._rng = None
