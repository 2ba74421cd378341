# -*- coding: utf-8 -*-
"""benchmarks/gpu_check.py in its dry mode (the same checks on the CPU, small), so that the GPU
check cannot rot before a GPU is lent. Its main runs in this process (a new one would spend
seconds importing); its ``train_net.py`` check starts one of its own."""

import sys

from ..common import load_script


def test_gpu_check_dry_run(capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout first
    gpu_check = load_script("benchmarks/gpu_check.py", "panet_gpu_check")
    code = gpu_check.main(["--dry"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    checks = [ln for ln in lines if ln.startswith(("ok ", "FAIL "))]
    assert len(checks) == 5 and all(ln.startswith("ok ") for ln in checks), checks
    assert any("PANet / Mask R-CNN: inference" in ln for ln in lines)
    assert lines[-1].startswith("0 checks failed")
