"""Workarounds for other libraries: context managers that put everything back, never applied on
import (docs/design.md lists them; tests/test_compat.py fails once one is no longer needed)."""

import contextlib
import importlib.abc
import importlib.util
import json
import multiprocessing
import os
import re
import sys
import types
import uuid
import warnings
from unittest import mock

import numpy as np

from detectron2.utils.file_io import PathManager

__all__ = ["quiet_jit_script_deprecation", "cityscapes_api_alias", "cityscapesscripts_fixes"]
__all__ += ["ddp_on_cpu", "atomic_output_files"]


@contextlib.contextmanager
def quiet_jit_script_deprecation():
    """Ignores torch 2.14's ``FutureWarning`` on ``torch.jit.script``, called by fvcore 0.1.5."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        yield


class _CityscapesApiAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``deeplearning.projects.cityscapesApi.cityscapesscripts`` to the installed one."""

    PREFIX = "deeplearning.projects.cityscapesApi"

    def find_spec(self, name, path=None, target=None):
        if name == self.PREFIX or self.PREFIX.startswith(name + "."):  # the empty parents
            return importlib.util.spec_from_loader(name, self, is_package=True)
        if name.startswith(self.PREFIX + "."):
            real = importlib.import_module(name[len(self.PREFIX) + 1 :])
            spec = importlib.util.spec_from_loader(name, self, is_package=hasattr(real, "__path__"))
            spec.loader_state = (real, real.__spec__)
            return spec
        return None

    def create_module(self, spec):
        return spec.loader_state[0] if spec.loader_state else None  # None: an empty parent

    def exec_module(self, module):
        if module.__spec__.loader_state:  # give back the spec that the import system replaced
            module.__spec__ = module.__spec__.loader_state[1]


@contextlib.contextmanager
def cityscapes_api_alias():
    """While the block runs, Detectron2's import path of cityscapesscripts (issue #5436) resolves to
    the installed package, in its Cityscapes loader's forked workers too; no-op where it imports."""
    from detectron2.data.datasets import cityscapes  # here: importing compat imports no data code

    finder, module = None, sys.modules.get("deeplearning")
    if module is not None:  # Meta's path imports without the alias
        imports = not isinstance(getattr(module.__spec__, "loader", None), _CityscapesApiAlias)
    else:
        imports = importlib.util.find_spec("deeplearning") is not None
    if not imports:
        finder = _CityscapesApiAlias()
        sys.meta_path.insert(0, finder)
    forks = finder and "fork" in multiprocessing.get_all_start_methods()
    mp = multiprocessing.get_context("fork") if forks else cityscapes.mp
    try:
        with mock.patch.object(cityscapes, "mp", mp):
            yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)


class _NumpyWithIn1d(types.ModuleType):
    """NumPy, plus ``in1d`` (removed in NumPy 2.4) as NumPy's deprecation note defines it."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


def cityscapesscripts_fixes(module, json_folder=None):
    """While cityscapesscripts 2.3.0's evaluation ``module`` runs: ``np.in1d`` for it (NumPy >= 2.4;
    cityscapesScripts PR #196); its ``writeDict2JSON`` writes into ``json_folder`` if given."""

    def default(o):  # writeDict2JSON's, NumPy scalars as numbers
        return o.item() if isinstance(o, np.generic) else o.__dict__

    def write_dict_to_json(d, path):
        with PathManager.open(os.path.join(json_folder, path), "w") as f:
            f.write(json.dumps(d, default=default, sort_keys=True, indent=4))

    fixes = {}
    if not hasattr(np, "in1d"):
        fixes["np"] = _NumpyWithIn1d("numpy")
    if json_folder is not None:
        fixes["writeDict2JSON"] = write_dict_to_json
    return mock.patch.multiple(module, **fixes) if fixes else contextlib.nullcontext()


def ddp_on_cpu():
    """While the block runs, Detectron2's ``create_ddp_model`` gives a CPU model
    ``device_ids=None`` (v0.6 passes ``[local_rank]``, which DDP refuses for a CPU model)."""
    import detectron2.utils.comm as comm
    from detectron2.engine import defaults  # here: importing compat imports no model code

    def create_ddp_model_on_any_device(model, _create=defaults.create_ddp_model, **kwargs):
        if comm.get_world_size() > 1 and all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return _create(model, **kwargs)

    return mock.patch.object(defaults, "create_ddp_model", create_ddp_model_on_any_device)


class _AtomicFile(contextlib.AbstractContextManager):  # its __enter__ returns the file
    """A file written as ``<path>.<8 hex digits>.partial`` (a new file), synced and renamed over
    ``path`` (a link: its target) when closed; a failure removes it, leaves ``path`` as it was and
    raises an ``OSError`` naming ``path``."""

    SUFFIX = ".partial"
    NAME = re.compile(r"\.[0-9a-f]{8}\.partial$")  # what it writes, and nothing of a user's

    def __init__(self, open_, path, mode, kwargs):
        self._path = os.path.realpath(path) if os.path.islink(path) else path
        self._partial = f"{self._path}.{uuid.uuid4().hex[:8]}{self.SUFFIX}"
        self._file = open_(self._partial, mode, **kwargs)  # (a new name: no user's file)
        self._error = None  # the first OSError of a write

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as e:
            self._error = self._error or e
            raise

    def __exit__(self, exc_type, exc, tb):  # returns None: an exception is not suppressed
        if exc_type is None:
            return self.close()
        self._discard()
        error = self._error or exc
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, self._path) from exc

    def close(self):
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._partial, self._path)
        except OSError as e:
            self._discard()
            raise OSError(e.errno, e.strerror, self._path) from e

    def _discard(self):
        with contextlib.suppress(Exception):  # closed even when its last flush fails
            self._file.close()
        with contextlib.suppress(OSError):
            os.remove(self._partial)


@contextlib.contextmanager
def _copied_over(open_, path, mode, kwargs):
    """A file written as ``<path>.<8 hex digits>.partial`` on another iopath storage, then copied
    over ``path``."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}{_AtomicFile.SUFFIX}"
    try:
        with open_(tmp, mode, **kwargs) as f:
            yield f
        PathManager.copy(tmp, path, overwrite=True)
    finally:
        if PathManager.exists(tmp):
            PathManager.rm(tmp)


def atomic_output_files():
    """While the block runs, ``PathManager.open(path, "w"/"wb")`` returns an :class:`_AtomicFile`
    (not local: a file copied over ``path``); Detectron2 0.6's evaluators, ``default_setup`` and
    fvcore's checkpointer write in place."""
    open_ = PathManager.open  # (mock puts back what was set on the object, e.g. by a test)

    def open_atomically(path, mode="r", **kwargs):
        if "w" not in mode:
            return open_(path, mode, **kwargs)
        if "://" in str(path):
            return _copied_over(open_, str(path), mode, kwargs)
        return _AtomicFile(open_, os.fspath(path), mode, kwargs)

    return mock.patch.object(PathManager, "open", open_atomically)
