# -*- coding: utf-8 -*-
"""
Every workaround for another library, each a context manager applied by the code path that needs
it (never on import), naming the upstream issue or version it is for; tests/test_compat.py has a
test per workaround that fails once upstream no longer needs it.
"""

import contextlib
import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import types
import warnings

import numpy as np

from detectron2.utils.file_io import PathManager

__all__ = [
    "quiet_jit_script_deprecation",
    "cityscapes_api_alias",
    "cityscapesscripts_fixes",
    "fvcore_op_handles",
    "ddp_on_cpu",
    "atomic_output_files",
]


@contextlib.contextmanager
def quiet_jit_script_deprecation():
    """
    fvcore 0.1.5.post20221221 (its latest release; ``fvcore.nn.focal_loss``, imported with
    ``fvcore.nn.weight_init``, so by Detectron2) calls ``torch.jit.script`` at import, which the
    torch installed here (2.14) reports with a ``FutureWarning``: the block ignores that one
    warning, so that importing panet_d2 prints nothing. The warning filters are put back after.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        yield


class _CityscapesApiAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """
    Resolves Meta's internal import path of cityscapesscripts that Detectron2's Cityscapes loaders
    and evaluators use, ``deeplearning.projects.cityscapesApi.cityscapesscripts`` (Detectron2
    issue #5436), to the installed ``cityscapesscripts`` modules themselves (one module object
    under both names, so that what Detectron2 sets on them, e.g. the evaluation ``args``, is the
    package's).
    """

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


def _meta_path_imports():
    """Whether Meta's path imports without the alias (a ``deeplearning`` package of its own)."""
    module = sys.modules.get("deeplearning")
    if module is not None:
        return not isinstance(getattr(module.__spec__, "loader", None), _CityscapesApiAlias)
    return importlib.util.find_spec("deeplearning") is not None


@contextlib.contextmanager
def cityscapes_api_alias():
    """
    While the block runs (loading Detectron2's Cityscapes datasets, running its Cityscapes
    evaluators), Detectron2's import path of cityscapesscripts (Detectron2 issue #5436) resolves
    to the installed package: a finder on ``sys.meta_path``, removed after (the modules imported
    through it stay imported, as any import). A no-op where that path imports.
    """
    finder = None
    if not _meta_path_imports():
        finder = _CityscapesApiAlias()
        sys.meta_path.insert(0, finder)
    try:
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


def _write_dict_to_json(d, path, folder=None):
    """cityscapesscripts' ``writeDict2JSON``, with NumPy scalars (NumPy >= 2 ``count_nonzero``)
    written as numbers, and a relative ``path`` (its ``"matches.json"``) under ``folder``."""

    def default(o):
        return o.item() if isinstance(o, np.generic) else o.__dict__

    with PathManager.open(os.path.join(folder or "", path), "w") as f:
        f.write(json.dumps(d, default=default, sort_keys=True, indent=4))


@contextlib.contextmanager
def cityscapesscripts_fixes(module, json_folder=None):
    """
    While one of cityscapesscripts 2.3.0's evaluation ``module`` runs: ``np.in1d`` for it where
    NumPy has none (NumPy >= 2.4; cityscapesScripts PR #196); with ``json_folder``, its
    ``writeDict2JSON`` is :func:`_write_dict_to_json` (NumPy >= 2 scalars; the instance
    evaluation's ``matches.json`` in that folder, not the working directory). Everything is put
    back after.
    """
    saved = {name: getattr(module, name) for name in ("np", "writeDict2JSON")}
    if not hasattr(np, "in1d"):
        module.np = _NumpyWithIn1d("numpy")
    if json_folder is not None:
        module.writeDict2JSON = functools.partial(_write_dict_to_json, folder=json_folder)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def fvcore_op_handles(handles):
    """
    While the block runs, every fvcore ``FlopCountAnalysis`` (so Detectron2's, and its
    ``tools/analyze_model.py`` run by tools/run_d2_tool.py) counts the ops of ``handles`` ({op
    name: handle}): fvcore 0.1.5 has no public registry of op handles, only the private table
    ``fvcore.nn.flop_count._DEFAULT_SUPPORTED_OPS`` that each analysis starts from. The table is put
    back after. (In the project's own code, :func:`panet_d2.analysis.flop_count_analysis` sets the
    handles on its analysis with fvcore's public ``set_op_handle`` instead.)
    """
    table = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    saved = dict(table)
    table.update(handles)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


@contextlib.contextmanager
def ddp_on_cpu():
    """
    Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]`` to DistributedDataParallel
    for every model, which DDP refuses for a CPU model: several processes on CPUs (gloo) fail in
    DefaultTrainer.__init__ (Detectron2 v0.6 and its main branch). Detectron2 has no hook there,
    so while the block runs (PANetTrainer's ``super().__init__``) the function that
    DefaultTrainer.__init__ calls is replaced by one that gives a CPU model ``device_ids=None``; a
    GPU model goes to Detectron2's function unchanged. Put back after.
    """
    import detectron2.utils.comm as comm
    from detectron2.engine import defaults  # here: importing compat imports no model code

    create_ddp_model = defaults.create_ddp_model

    def create_ddp_model_on_any_device(model, **kwargs):
        if comm.get_world_size() > 1 and all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return create_ddp_model(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model_on_any_device
    try:
        yield
    finally:
        defaults.create_ddp_model = create_ddp_model


class _AtomicFile:
    """
    A file opened for writing as ``<path>.partial`` in the same folder; closing it syncs it to the
    disk and renames it over ``path`` (``os.replace``). A failure (a write, the last flush, or an
    exception in its ``with`` block) removes the partial file and leaves ``path`` as it was; an
    ``OSError`` is raised naming ``path`` (also where torch wrapped its writer's error in a
    ``RuntimeError``).
    """

    def __init__(self, open_, path, mode, kwargs):
        self._path, self._partial = path, path + ".partial"
        self._file = open_(self._partial, mode, **kwargs)
        self._error = None  # the first OSError of a write

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as e:
            self._error = self._error or e
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return False
        self._discard()
        error = self._error if self._error is not None else exc
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, self._path) from exc
        return False

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
def atomic_output_files():
    """
    Detectron2 0.6's evaluators (COCO, LVIS, semantic, panoptic: ``instances_predictions.pth``,
    ``coco_instances_results.json``, ``sem_seg_predictions.json``, ...) and ``default_setup``
    (``config.yaml``) write their files in place with ``PathManager.open(path, "w"/"wb")``: a full
    disk left a truncated file. While the block runs, such an open of a local path returns an
    :class:`_AtomicFile` (a temporary file renamed over the path when closed, removed on failure,
    as the project's checkpoints); reading and appending (the log, ``metrics.json``) are
    unchanged. ``PathManager.open`` is put back after.
    """
    manager = PathManager
    open_, own = manager.open, "open" in vars(manager)  # own: set on the object (a test's)

    def open_atomically(path, mode="r", **kwargs):
        if "w" not in mode or "://" in str(path):
            return open_(path, mode, **kwargs)
        return _AtomicFile(open_, os.fspath(path), mode, kwargs)

    manager.open = open_atomically
    try:
        yield
    finally:
        if own:
            manager.open = open_
        else:
            del manager.open  # the method of its class again
