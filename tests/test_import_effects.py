# -*- coding: utf-8 -*-
"""
``import panet_d2`` registers components and datasets and changes nothing else: no attribute of
Detectron2, fvcore, NumPy or torch replaced, no import hook, no warning filter, no FLOP count
changed (Detectron2's Mask R-CNN through Detectron2's FlopCountAnalysis), no warning printed.
Training with ``PANetTrainer`` leaves no log filter of panet_d2 on Detectron2's loggers.
"""

import logging
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# run in a fresh interpreter: the state before panet_d2 is imported, then after
_SCRIPT = r"""
import sys, warnings
import numpy, torch, fvcore.nn, fvcore.nn.flop_count
import detectron2.config, detectron2.data, detectron2.engine, detectron2.evaluation
import detectron2.modeling, detectron2.utils.analysis
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

PREFIXES = ("detectron2", "fvcore", "numpy", "torch")
MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
TABLE = sys.modules["fvcore.nn.flop_count"]._DEFAULT_SUPPORTED_OPS


def attributes():
    return {
        name: {k: id(v) for k, v in list(vars(m).items())}
        for name, m in list(sys.modules.items())
        if m is not None and name.split(".")[0] in PREFIXES
    }


def mask_rcnn_flops():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(MASK_RCNN))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 96), generator=torch.Generator().manual_seed(0))
    fca = FlopCountAnalysis(model, [{"image": image.float()}])
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total(), sorted(fca.unsupported_ops())


flops = mask_rcnn_flops()  # first: tracing fills torch's lazy caches
before, meta_path, filters = attributes(), list(sys.meta_path), list(warnings.filters)
ops = dict(TABLE)

import panet_d2  # noqa: E402

after = attributes()
replaced = sorted(
    "{}.{}".format(name, k)
    for name, attrs in before.items()
    for k, i in attrs.items()
    if after.get(name, {}).get(k, i) != i
)
assert not replaced, replaced
assert sys.meta_path == meta_path, (sys.meta_path, meta_path)
assert warnings.filters == filters
assert TABLE == ops
assert not any(m.startswith("deeplearning") for m in sys.modules)
assert mask_rcnn_flops() == flops, (mask_rcnn_flops(), flops)
assert flops[0] > 0 and "torchvision::roi_align" in flops[1], flops
print("OK")
"""


def _start(args, code):
    """``python3 <args> -c <code>`` in the checkout, started (its output read by :func:`_run`)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([sys.executable] + args + ["-c", code], cwd=ROOT, env=env, **pipes)


def _run(args, code, proc=None):
    """The finished process (a CompletedProcess) of :func:`_start`: ``proc``, or a new one."""
    proc = proc or _start(args, code)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_import_replaces_nothing_and_keeps_flop_counts():
    out = _run([], _SCRIPT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK"


def test_import_prints_no_warning():
    code = "import panet_d2"  # side by side: each spends seconds importing
    strict, default = _start(["-W", "error::FutureWarning"], code), _start(["-W", "default"], code)
    out = _run([], code, strict)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run([], code, default)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def _panet_d2_log_filters():
    """(logger, filter) of each filter of a panet_d2 class on Detectron2's loggers."""
    loggers = [logging.getLogger("detectron2")] + [
        lg
        for name, lg in logging.root.manager.loggerDict.items()
        if name.startswith("detectron2.") and isinstance(lg, logging.Logger)
    ]
    return [
        (lg.name, f)
        for lg in loggers
        for f in lg.filters
        if type(f).__module__.split(".")[0] == "panet_d2"
    ]


@pytest.mark.usefixtures("single_thread")
def test_training_leaves_no_log_filter(tmp_path_factory, tmp_path):
    """PANetTrainer's one-line error filter is on Detectron2's train loop logger while train()
    runs only: not after it returns, nor after training stopped by an error."""
    from detectron2.engine import HookBase

    from panet_d2.engine import PANetTrainer
    from panet_d2.errors import InputError

    from .common import panet_cfg, synthetic_datasets

    during = []

    class Record(HookBase):
        def __init__(self, fail_at=None):
            self.fail_at = fail_at

        def after_step(self):
            during.append([name for name, _ in _panet_d2_log_filters()])
            if self.trainer.iter == self.fail_at:
                raise InputError("stopped by the test")

    splits = {"train": {"num_images": 2, "seed": 1}}
    with synthetic_datasets(tmp_path_factory, "test_import_effects", splits):
        # stopped at iteration 1 of 3: at the last one, Detectron2's final log write fails
        for max_iter, fail_at in ((1, None), (3, 1)):
            cfg = panet_cfg(
                "quick_schedules/panet_R_18_synth_instance.yaml",
                opts=["DATASETS.TRAIN", ("test_import_effects_train",), "DATASETS.TEST", ()]
                + ["SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", max_iter]
                + ["OUTPUT_DIR", str(tmp_path / str(max_iter))],
            )
            trainer = PANetTrainer(cfg)
            assert _panet_d2_log_filters() == []
            trainer.register_hooks([Record(fail_at)])
            trainer.resume_or_load(resume=False)
            if fail_at is None:
                trainer.train()
            else:
                with pytest.raises(InputError, match="stopped by the test"):
                    trainer.train()
            assert _panet_d2_log_filters() == []
    assert during == [["detectron2.engine.train_loop"]] * 3
