# -*- coding: utf-8 -*-
"""
tools/export_model.py --run-eval, as a user runs it: the evaluation results are printed as
train_net.py --eval-only prints them (the evaluator's table, print_csv_format's "copypaste"
lines), and the tracing warnings are one logged count instead of dozens of warnings.
"""

import os
import re

import pytest
import torch

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model

from panet_d2 import PANetCheckpointer
from panet_d2.data import register_synthetic_dataset

from ..common import panet_cfg, run_script

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SMOKE = "quick_schedules/panet_R_18_synth_instance_smoke.yaml"
VAL = {"num_images": 16, "seed": 7}  # panet_synth_val (DEFAULT_SPLITS)


def _copypaste(text):
    """{task: {metric: value}} from print_csv_format's lines."""
    lines = re.findall(r"copypaste: (.*)", text)
    out = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            keys, values = lines[i + 1].split(","), lines[i + 2].split(",")
            out[line[len("Task: ") :]] = dict(zip(keys, map(float, values)))
    return out


def test_run_eval_prints_the_metrics(tmp_path):
    torch.manual_seed(0)
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # near-random model: AP defined
    opts += ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]  # small: the printing
    cfg = panet_cfg(SMOKE, small=False, opts=opts)
    model = build_model(cfg)
    PANetCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    weights = str(tmp_path / "ckpt.pth")
    datasets = str(tmp_path / "datasets")

    # fmt: off
    proc = run_script(
        "tools/export_model.py",
        "--config-file", os.path.join(ROOT, "configs", SMOKE), "--run-eval",
        "--output", tmp_path / "out", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", *opts,
        PANET_D2_DATASETS=datasets,
    )
    # fmt: on
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr

    # as train_net.py --eval-only: the evaluator's tables and print_csv_format's lines
    for task in ("bbox", "segm"):
        assert "Evaluation results for {}:".format(task) in text
    printed = _copypaste(text)
    assert set(printed) == {"bbox", "segm"}

    # the metrics of this checkpoint on the same images (panet_synth_val, generated there)
    register_synthetic_dataset("test_export_run_eval", root=datasets, splits={"val": VAL})
    model.eval()
    expected = inference_on_dataset(
        model,
        build_detection_test_loader(cfg, "test_export_run_eval_val"),
        COCOEvaluator("test_export_run_eval_val", output_dir=str(tmp_path / "eager")),
    )
    for task, metrics in printed.items():
        assert list(metrics) == [k for k in expected[task] if "-" not in k]  # no per-class
        for key, value in metrics.items():
            # traced vs eager: the same up to float rounding (tests/export/test_export_command.py)
            assert value == pytest.approx(expected[task][key], abs=0.05, nan_ok=True), (task, key)

    # tracing warnings: one logged count, none shown
    assert "TracerWarning:" not in text
    count = re.findall(r"Tracing: (\d+) TracerWarnings not shown", text)
    assert len(count) == 1 and int(count[0]) > 0
