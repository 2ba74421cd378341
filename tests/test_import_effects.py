# -*- coding: utf-8 -*-
"""
``import panet_d2`` registers components and datasets and changes nothing else: no attribute of
Detectron2, fvcore, NumPy or torch replaced, no import hook, no warning filter, no FLOP count
changed (Detectron2's Mask R-CNN through Detectron2's FlopCountAnalysis), no warning printed.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def _run(args, code):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable] + args + ["-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_import_replaces_nothing_and_keeps_flop_counts():
    out = _run([], _SCRIPT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK"


def test_import_prints_no_warning():
    out = _run(["-W", "error::FutureWarning"], "import panet_d2")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run(["-W", "default"], "import panet_d2")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
