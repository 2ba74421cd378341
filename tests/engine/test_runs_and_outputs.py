# -*- coding: utf-8 -*-
"""
Runs, outputs and exit codes (issue 25), through train_net.py's and demo.py's entry points
(in-process, with ``sys.argv`` set as the command line would): one run at a time per OUTPUT_DIR
(a second one, from another process, stops in one line naming the first; a killed run leaves
nothing stuck), evaluation files written atomically and a full disk in one line (also at a
checkpoint save, with Detectron2's writers failing on the same disk), Ctrl-C in one line naming the
checkpoint and the --resume command, and the table of exit codes of docs/reliability.md, each row
run. A full disk is simulated by ``PathManager.open`` files that fail with ENOSPC, Ctrl-C by a
KeyboardInterrupt raised from a hook. Smoke config, CPU, 2 or 3 iterations.
"""

import contextlib
import errno
import io
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import time

import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("panopticapi")

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

from panet_d2.engine import trainer  # noqa: E402
from panet_d2.errors import TrainingDivergedError  # noqa: E402

from ..common import ROOT, FileProxy, load_script, synthetic_datasets  # noqa: E402
from ..tools.test_train_net import SMOKE, _with_hooks  # noqa: E402

_lock = load_script("train_net.py", "panet_train_net_lock")  # train_net.py's OUTPUT_DIR lock
LOCK_FILE, output_dir_lock = _lock.LOCK_FILE, _lock.output_dir_lock

pytestmark = pytest.mark.usefixtures("single_thread")

PREFIX = "t_runs"  # 4 training and 2 validation images


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    splits = {"train": {"num_images": 4, "seed": 1}, "val": {"num_images": 2, "seed": 3}}
    with synthetic_datasets(tmp_path_factory, PREFIX, splits) as root:
        yield root


def _argv(out, *opts, flags=(), test=False):
    """train_net.py's command line on the smoke config: 2 iterations, no evaluation unless
    ``test`` (the validation split)."""
    argv = ["train_net.py", "--config-file", SMOKE, *flags, "OUTPUT_DIR", str(out)]
    argv += ["DATASETS.TRAIN", "('{}_train',)".format(PREFIX)]
    argv += ["DATASETS.TEST", "('{}_val',)".format(PREFIX) if test else "()"]
    argv += ["DATALOADER.NUM_WORKERS", "0", "SEED", "7", "MODEL.DEVICE", "cpu"]
    return argv + ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100"] + list(map(str, opts))


def _run(monkeypatch, train_net, argv):
    """train_net.py with ``argv`` (invoke_main): its exit code (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
    try:
        train_net.invoke_main()
    except SystemExit as e:
        return e.code
    return 0


def _last_line(capsys):
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    return err.strip().splitlines()[-1]


class _Interrupt(HookBase):
    """Ctrl-C at the end of iteration ``at`` (after its checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt()


@pytest.fixture(scope="module")
def interrupted(train_net, datasets, tmp_path_factory):
    """A run stopped by Ctrl-C after iteration 1 and its checkpoint model_0000001.pth: its folder,
    exit code and last stderr line."""
    out = tmp_path_factory.mktemp("interrupted")
    argv = _argv(out, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 2)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        _with_hooks(mp, train_net, _Interrupt(1))
        code = _run(mp, train_net, argv)
    return {"out": out, "code": code, "err": err.getvalue()}


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint(interrupted, train_net, monkeypatch):
    out = interrupted["out"]
    assert interrupted["code"] == 130
    assert "Traceback" not in interrupted["err"]
    last = interrupted["err"].strip().splitlines()[-1]
    checkpoint = str(out / "model_0000001.pth")
    prefix = "Interrupted by Ctrl-C at iteration 1. The last checkpoint is {!r}; continue from it "
    prefix = prefix.format(checkpoint) + "with: python3 train_net.py --resume --config-file "
    assert last.startswith(prefix), last
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    # the command of the line continues the run at iteration 2
    log = {}

    class Start(HookBase):
        def before_train(self):
            log["start"] = self.trainer.start_iter

    _with_hooks(monkeypatch, train_net, Start())
    command = shlex.split(last.split("continue from it with: ")[1])
    assert _run(monkeypatch, train_net, command[1:]) == 0
    assert log["start"] == 2
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_interrupted_lines(train_net, monkeypatch):
    args = train_net.default_argument_parser().parse_args(["--config-file", "c.yaml"])
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--config-file", "c.yaml"])
    line = train_net.interrupted_line(args, trainer.TrainingInterrupted(0, None))
    assert line == (
        "Interrupted by Ctrl-C at iteration 0, before the first checkpoint: nothing to resume "
        "from; run the command again to start over."
    )
    line = train_net.interrupted_line(args, trainer.TrainingInterrupted(4, "o/model_0000003.pth"))
    assert line.endswith(
        "continue from it with: python3 train_net.py --resume --config-file c.yaml"
    )
    args.eval_only = True
    assert "during the evaluation" in train_net.interrupted_line(args, KeyboardInterrupt())


# -------------------------------------------------------------------------------------------------
# One run per OUTPUT_DIR
# -------------------------------------------------------------------------------------------------
def _hold_lock(path, ready):
    with output_dir_lock(path):
        ready.set()
        while True:
            ready.wait(60)


def test_second_run_stops_naming_the_first(interrupted, train_net, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(interrupted["out"] / "model_0000001.pth", out)
    (out / "last_checkpoint").write_text("model_0000001.pth")
    context = multiprocessing.get_context("fork")  # a second process, without importing again
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(out), ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(60)
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == holder.pid and {"host", "started", "command"} <= set(info)
        for flags in (["--resume"], ["--eval-only", "--resume"]):  # --eval-only: also refused
            capsys.readouterr()
            assert _run(monkeypatch, train_net, _argv(out, flags=flags)) == 2
            line = _last_line(capsys)
            assert line.startswith(
                "ERROR: OUTPUT_DIR={!r} is in use by another run: pid {} on host {}, started "
                "{} (".format(str(out), holder.pid, info["host"], info["started"])
            ), line
            assert line.endswith("give another OUTPUT_DIR.")
        assert sorted(os.listdir(out)) == sorted(
            [LOCK_FILE, "last_checkpoint", "model_0000001.pth"]
        )
    finally:
        holder.kill()  # as kill -9: the lock goes with the process
        holder.join()
    # --resume of the killed run: its last iteration
    assert _run(monkeypatch, train_net, _argv(out, "SOLVER.MAX_ITER", 3, flags=["--resume"])) == 0
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / LOCK_FILE).read_text() == ""  # released: the run's details emptied


def test_resume_with_other_parameter_groups(interrupted, train_net, tmp_path, monkeypatch, capsys):
    """--resume with a config that groups the parameters otherwise (SOLVER.BIAS_LR_FACTOR): one
    line naming the keys (was torch's ValueError traceback from the optimizer's state)."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(interrupted["out"] / "model_0000001.pth", out)
    (out / "last_checkpoint").write_text("model_0000001.pth")
    capsys.readouterr()
    argv = _argv(out, "SOLVER.MAX_ITER", 3, "SOLVER.BIAS_LR_FACTOR", 2.0, flags=["--resume"])
    assert _run(monkeypatch, train_net, argv) == 2
    assert _last_line(capsys) == (
        "ERROR: Checkpoint {!r} does not fit the optimizer: loaded state dict has a different "
        "number of parameter groups: the config groups the parameters otherwise than the run that "
        "saved it (SOLVER.BIAS_LR_FACTOR, SOLVER.WEIGHT_DECAY_NORM / _BIAS, "
        "MODEL.BACKBONE.FREEZE_AT), or the file is another model's; resume with the config it "
        "was trained with.".format(str(out / "model_0000001.pth"))
    )


def _sleep(started):
    started.set()
    time.sleep(60)


def test_forked_children_do_not_hold_the_lock(tmp_path):
    """A DataLoader worker (forked while the run holds the lock) does not keep it after the run
    ends or is killed."""
    context = multiprocessing.get_context("fork")
    started = context.Event()
    with output_dir_lock(str(tmp_path)):
        child = context.Process(target=_sleep, args=(started,), daemon=True)
        child.start()
        assert started.wait(60)  # the child runs (after the fork handlers)
    try:
        with output_dir_lock(str(tmp_path)):  # the child still lives
            pass
    finally:
        child.kill()
        child.join()


def test_only_the_main_process_takes_the_lock(train_net, tmp_path, monkeypatch):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    with output_dir_lock(str(tmp_path)):  # held: a second block in this process is refused
        with pytest.raises(Exception, match="is in use by another run"):
            with train_net.owning_output_dir(cfg):
                pass
        monkeypatch.setattr(comm, "is_main_process", lambda: False)
        with train_net.owning_output_dir(cfg):  # another rank: no lock
            pass


# -------------------------------------------------------------------------------------------------
# A full disk
# -------------------------------------------------------------------------------------------------
class _Disk:
    """``PathManager.open`` files that fail with ENOSPC: those whose name has ``name`` after
    ``limit`` bytes, or every file opened for writing or appending once ``full`` is set."""

    def __init__(self, monkeypatch, name=None, limit=0):
        self.name, self.limit, self.full = name, limit, False
        open_ = PathManager.open

        def open_failing(path, mode="r", **kwargs):
            f = open_(path, mode, **kwargs)
            return _FailingFile(f, self, path) if ("w" in mode or "a" in mode) else f

        monkeypatch.setattr(PathManager, "open", open_failing)


class _FailingFile(FileProxy):
    def __init__(self, f, disk, path):
        super().__init__(f)
        self._disk = disk
        self._left = disk.limit if disk.name and disk.name in os.path.basename(path) else None

    def _check(self, n):
        if self._disk.full or (self._left is not None and n > self._left):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._left is not None:
            self._left -= n

    def write(self, data):
        if self._left is not None and len(data) > self._left:
            self._f.write(data[: self._left])  # what fitted
        self._check(len(data))
        return self._f.write(data)

    def flush(self):
        self._check(0)
        return self._f.flush()


def test_full_disk_in_evaluation_leaves_no_truncated_file(
    interrupted, train_net, tmp_path, monkeypatch, capsys
):
    weights = interrupted["out"] / "model_0000001.pth"
    _Disk(monkeypatch, name="coco_instances_results.json", limit=1000)
    argv = _argv(tmp_path, "MODEL.WEIGHTS", weights, flags=["--eval-only"], test=True)
    assert _run(monkeypatch, train_net, argv) == 2
    results = str(tmp_path / "inference" / "coco_instances_results.json")
    assert _last_line(capsys) == (
        "ERROR: Cannot write {!r}: No space left on device. Free some space, or give an output "
        "folder on another disk, and run again.".format(results)
    )
    # written before it: complete; no partial file
    assert sorted(os.listdir(tmp_path / "inference")) == ["instances_predictions.pth"]
    predictions = torch.load(
        tmp_path / "inference" / "instances_predictions.pth", weights_only=False
    )
    assert len(predictions) == 2  # the 2 validation images


class _FillDisk(HookBase):
    """The disk is full from the end of iteration 0 (after its checkpoint)."""

    def __init__(self, disk):
        self.disk = disk

    def after_step(self):
        self.disk.full = self.disk.full or self.trainer.iter == 0


def test_full_disk_at_a_checkpoint_ends_with_its_line(
    train_net, datasets, tmp_path, monkeypatch, capsys
):
    disk = _Disk(monkeypatch)
    _with_hooks(monkeypatch, train_net, _FillDisk(disk))
    argv = _argv(tmp_path, "SOLVER.CHECKPOINT_PERIOD", 1, test=True)
    assert _run(monkeypatch, train_net, argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "ERROR: Cannot save checkpoint {!r}: No space left on device (the previous checkpoint is "
        "intact: last_checkpoint names 'model_0000000.pth').".format(
            str(tmp_path / "model_0000001.pth")
        )
    )
    log = str(tmp_path / "log.txt")
    warning = (
        "WARNING: Cannot write the log file {!r}: No space left on device; the log goes on on "
    )
    assert warning.format(log) + "the terminal only." in lines
    # after the failed save: no evaluation, the metrics writer's error in one line
    assert "Start inference" not in out + err
    assert "After training stopped, PeriodicWriter could not finish: OSError: " in out
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


# -------------------------------------------------------------------------------------------------
# The table of exit codes (docs/reliability.md)
# -------------------------------------------------------------------------------------------------
def _exit_code_table():
    """{code: [case, ...]} of the table of docs/reliability.md's "Exit codes"."""
    with open(os.path.join(ROOT, "docs", "reliability.md")) as f:
        section = f.read().split("### Exit codes")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (\d+) \| .* \| ((?:`[\w-]+`(?:, )?)+) \|$", section, re.M)
    return {int(code): re.findall(r"`([\w-]+)`", cases) for code, cases in rows}


def _code(call):
    """The exit code of an entry point's ``call``: its SystemExit's; 0 when it returns; 1 for an
    exception (Python prints its traceback and exits with 1)."""
    try:
        call()
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except Exception:
        return 1
    return 0


def _raising(train_net, monkeypatch, error):
    def main(args):
        raise error

    monkeypatch.setattr(train_net, "main", main)


def test_exit_code_table(interrupted, train_net, datasets, tmp_path, monkeypatch, capsys):
    weights = str(interrupted["out"] / "model_0000001.pth")

    def run(*args, **kwargs):
        def call():
            monkeypatch.setattr(sys, "argv", _argv(*args, **kwargs))
            train_net.invoke_main()

        return call

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    demo = load_script("demo.py", "panet_demo_exit_codes")
    demo_argv = ["--config-file", SMOKE, "--input", str(broken), "--output", str(tmp_path / "v")]
    demo_argv += ["--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]

    def in_use():
        with output_dir_lock(str(tmp_path / "locked")):
            run(tmp_path / "locked")()

    def full_disk():
        with pytest.MonkeyPatch.context() as mp:
            _Disk(mp, name="config.yaml")
            run(tmp_path / "full")()

    def raising(error):
        def call():
            with pytest.MonkeyPatch.context() as mp:
                _raising(train_net, mp, error)
                run(tmp_path / "x")()

        return call

    (tmp_path / "locked").mkdir()
    cases = {
        "trained": run(tmp_path / "t", "SOLVER.MAX_ITER", 1),
        "evaluated": run(
            tmp_path / "e", "MODEL.WEIGHTS", weights, flags=["--eval-only"], test=True
        ),
        "diverged": raising(TrainingDivergedError("Training diverged at iteration 3: ...")),
        "bug": raising(ValueError("a bug")),
        "input-error": run(tmp_path / "i", flags=["--config-file", str(tmp_path / "no.yaml")]),
        "usage": run(tmp_path / "u", flags=["--no-such-option"]),
        "output-dir-in-use": in_use,
        "disk-full": full_disk,
        "demo-unreadable-image": lambda: demo.main(demo_argv),
        "interrupted": raising(KeyboardInterrupt()),
    }
    table = _exit_code_table()
    assert sorted(table) == [0, 1, 2, 130]
    assert sorted(c for row in table.values() for c in row) == sorted(cases)
    for code, names in table.items():
        for name in names:
            assert _code(cases[name]) == code, name
    capsys.readouterr()


def test_full_disk_during_training_is_logged_in_one_line():
    """Detectron2's "Exception during training:" log of a full disk (here torch's RuntimeError
    raised from the writer's OSError) while train() runs: one line."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/metrics.json")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    except RuntimeError:
        record = logging.LogRecord(
            "detectron2.engine.train_loop",
            logging.ERROR,
            "",
            0,
            "Exception during training:",
            (),
            sys.exc_info(),
        )
    assert trainer._ONE_LINE_ERRORS.filter(record) and record.exc_info is None
    assert record.getMessage() == (
        "Exception during training: Cannot write 'out/metrics.json': No space left on device. Free "
        "some space, or give an output folder on another disk, and run again."
    )


def test_eval_only_without_test_datasets_refused(
    interrupted, train_net, datasets, tmp_path, monkeypatch, capsys
):
    """--eval-only with DATASETS.TEST empty (Detectron2's default) evaluated nothing and exited 0:
    one line once the weights are loaded (they are checked too), exit code 2."""
    weights = str(interrupted["out"] / "model_0000001.pth")
    argv = _argv(tmp_path / "e", "MODEL.WEIGHTS", weights, flags=["--eval-only"])
    assert _run(monkeypatch, train_net, argv) == 2
    assert "ERROR: --eval-only: DATASETS.TEST is empty, nothing to evaluate" in (
        capsys.readouterr().err
    )
