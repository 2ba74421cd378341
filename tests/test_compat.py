# -*- coding: utf-8 -*-
"""
panet_d2.compat: each workaround does its job and puts everything back, and each has a test that
fails once upstream no longer needs it (then remove the workaround and its test).
"""

import errno
import importlib
import inspect
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from detectron2.data.datasets import cityscapes as d2_cityscapes_data
from detectron2.evaluation import cityscapes_evaluation as d2_cityscapes_eval

from panet_d2 import compat

from .common import FileProxy

cityscapesscripts = pytest.importorskip("cityscapesscripts")


# ---- fvcore: torch.jit.script at import ----------------------------------------------------------
def test_fvcore_still_warns_at_import():
    """Fails once fvcore.nn imports without torch's FutureWarning: remove
    compat.quiet_jit_script_deprecation."""
    out = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", "import fvcore.nn"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "torch.jit.script` is deprecated" in out.stderr


def test_quiet_jit_script_deprecation_is_scoped():
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compat.quiet_jit_script_deprecation():
            warnings.warn("`torch.jit.script` is deprecated. (test)", FutureWarning)
            warnings.warn("another FutureWarning (test_compat)", FutureWarning)
        assert [str(w.message) for w in caught] == ["another FutureWarning (test_compat)"]
    assert warnings.filters == filters


# ---- Detectron2: Meta's import path of cityscapesscripts ----------------------------------------
def test_detectron2_still_imports_meta_path():
    """Fails once Detectron2 imports cityscapesscripts by its own name (issue #5436) or Meta's
    path imports: remove compat.cityscapes_api_alias."""
    for module in (d2_cityscapes_data, d2_cityscapes_eval):
        assert compat._CityscapesApiAlias.PREFIX in inspect.getsource(module)
    code = "import {}.cityscapesscripts".format(compat._CityscapesApiAlias.PREFIX)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr


def test_cityscapes_api_alias_is_scoped():
    import cityscapesscripts.helpers.labels as labels

    meta_path = list(sys.meta_path)
    with compat.cityscapes_api_alias():
        alias = importlib.import_module(
            compat._CityscapesApiAlias.PREFIX + ".cityscapesscripts.helpers.labels"
        )
    assert alias is labels and alias.__spec__.name == "cityscapesscripts.helpers.labels"
    assert sys.meta_path == meta_path


# ---- cityscapesscripts 2.3.0 and NumPy >= 2 ---------------------------------------------------
def test_cityscapesscripts_still_needs_fixes(tmp_path):
    """Fails once cityscapesscripts' evaluation runs on this NumPy (no np.in1d call, or NumPy has
    it) and writes NumPy scalars: remove compat.cityscapesscripts_fixes."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as instance_eval
    from cityscapesscripts.helpers.csHelpers import writeDict2JSON

    assert "np.in1d" in inspect.getsource(instance_eval) and not hasattr(np, "in1d")
    with pytest.raises((TypeError, AttributeError)):  # NumPy scalars: no __dict__
        writeDict2JSON({"n": np.count_nonzero(np.ones(3))}, str(tmp_path / "matches.json"))


def test_cityscapesscripts_fixes_are_scoped(tmp_path):
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as instance_eval

    original = instance_eval.writeDict2JSON, instance_eval.np
    with compat.cityscapesscripts_fixes(instance_eval, json_folder=str(tmp_path)):
        ones = instance_eval.np.in1d(np.arange(4).reshape(2, 2), [1, 3])
        assert ones.tolist() == [False, True, False, True]
        instance_eval.writeDict2JSON({"n": np.count_nonzero(np.ones(3))}, "matches.json")
    assert (instance_eval.writeDict2JSON, instance_eval.np) == original
    assert (tmp_path / "matches.json").read_text().split() == ["{", '"n":', "3", "}"]
    assert not os.path.exists("matches.json")


# ---- Detectron2: create_ddp_model and CPU models -------------------------------------------------
def _ddp_kwargs(monkeypatch, create_ddp_model):
    from detectron2.engine import defaults

    seen = {}
    monkeypatch.setattr(defaults.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(defaults, "DistributedDataParallel", lambda model, **kw: seen.update(kw))
    create_ddp_model(torch.nn.Linear(2, 2))
    return seen


def test_detectron2_still_gives_cpu_models_device_ids(monkeypatch):
    """Fails once Detectron2's create_ddp_model leaves device_ids out for a CPU model: remove
    compat.ddp_on_cpu."""
    from detectron2.engine import defaults

    assert _ddp_kwargs(monkeypatch, defaults.create_ddp_model)["device_ids"] is not None


def test_ddp_on_cpu_is_scoped(monkeypatch):
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    with compat.ddp_on_cpu():
        assert _ddp_kwargs(monkeypatch, defaults.create_ddp_model)["device_ids"] is None
    assert defaults.create_ddp_model is original


# ---- the list of workarounds (docs/design.md) ----------------------------------------------------
def test_every_workaround_is_listed_in_the_docs():
    """Each ``# UPSTREAM-WORKAROUND <id>:`` marker of the repository and each workaround of
    compat.py has its entry in docs/design.md (Workarounds of upstream behaviour), and each entry
    names one of them in the file that has it."""
    import re

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    markers = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "build")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    for found in re.findall(r"# UPSTREAM-WORKAROUND ([\w-]+):", f.read()):
                        assert found not in markers, found  # one marker per workaround
                        markers[found] = os.path.relpath(path, root)
    with open(os.path.join(root, "docs", "design.md")) as f:
        section = f.read().split("## Workarounds of upstream behaviour")[1]
    listed = dict(re.findall(r"^- `([\w-]+)` \(`([^`]+)`\)", section, re.M))
    assert listed == markers
    in_compat = set(re.findall(r"^- `(\w+)`:", section, re.M))
    assert in_compat == set(compat.__all__)
    assert len(markers) >= 6  # the ones docs/design.md lists today


# ---- Detectron2: evaluation files and config.yaml written in place -------------------------------
def test_detectron2_still_writes_outputs_in_place():
    """Fails once Detectron2's evaluators and default_setup stop opening their output files for
    writing in place: remove compat.atomic_output_files (or keep it, if they still do elsewhere)."""
    from detectron2.engine import defaults
    from detectron2.evaluation import coco_evaluation, sem_seg_evaluation

    for module in (coco_evaluation, sem_seg_evaluation):
        source = inspect.getsource(module)
        assert 'PathManager.open(file_path, "w")' in source
        assert 'PathManager.open(file_path, "wb")' in source
    assert 'PathManager.open(path, "w")' in inspect.getsource(defaults.default_setup)


class _FullAfter(FileProxy):
    """A file whose writes fail with ENOSPC once ``limit`` bytes (or characters) were written."""

    def __init__(self, f, limit):
        super().__init__(f)
        self._left = limit

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._f.write(data)


def test_atomic_output_files_are_atomic_and_scoped(tmp_path, monkeypatch):
    from detectron2.utils.file_io import PathManager

    json_file, pth = str(tmp_path / "results.json"), str(tmp_path / "predictions.pth")
    before = vars(PathManager).get("open")  # another test's monkeypatch may leave a bound method
    with compat.atomic_output_files():
        with PathManager.open(json_file, "w") as f:
            f.write('{"old": 1}')
        with PathManager.open(pth, "wb") as f:
            torch.save({"x": torch.zeros(1000)}, f)
        with PathManager.open(json_file, "a") as f:  # appending: as before
            f.write("\n")
    assert sorted(os.listdir(tmp_path)) == ["predictions.pth", "results.json"]
    assert open(json_file).read() == '{"old": 1}\n'
    assert vars(PathManager).get("open") is before  # put back

    open_ = PathManager.open
    monkeypatch.setattr(
        PathManager, "open", lambda p, mode="r", **kw: _FullAfter(open_(p, mode, **kw), 100)
    )
    with compat.atomic_output_files():
        with pytest.raises(OSError) as e:
            with PathManager.open(json_file, "w") as f:
                f.write('{"new": "' + "x" * 1000 + '"}')
        assert (e.value.errno, e.value.filename) == (errno.ENOSPC, json_file)
        with pytest.raises(OSError) as e:  # torch.save wraps it in a RuntimeError: unwrapped
            with PathManager.open(pth, "wb") as f:
                torch.save({"y": torch.ones(1000)}, f)
        assert (e.value.errno, e.value.filename) == (errno.ENOSPC, pth)
    assert sorted(os.listdir(tmp_path)) == ["predictions.pth", "results.json"]  # no partial file
    assert open(json_file).read() == '{"old": 1}\n'
    assert torch.equal(torch.load(pth, weights_only=True)["x"], torch.zeros(1000))


def test_atomic_files_write_through_links_and_keep_a_users_partial_file(tmp_path):
    """A link is written through (its target replaced, the link kept; before: the link replaced
    by a file); a file of the user named <path>.partial is kept (before: written over)."""
    from detectron2.utils.file_io import PathManager

    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    (tmp_path / "link.json.partial").write_text("mine")
    with compat.atomic_output_files(), PathManager.open(str(link), "w") as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    assert (tmp_path / "link.json.partial").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["link.json", "link.json.partial", "target.json"]
