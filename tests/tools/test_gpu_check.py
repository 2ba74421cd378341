# -*- coding: utf-8 -*-
"""benchmarks/gpu_check.py in its dry mode (the same checks on the CPU, small), so that the GPU
check cannot rot before a GPU is lent."""

import os
import subprocess
import sys

from ..common import ROOT


def test_gpu_check_dry_run():
    out = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "gpu_check.py"), "--dry"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith(("ok ", "FAIL "))]
    assert len(checks) == 5 and all(ln.startswith("ok ") for ln in checks), checks
    assert any("PANet / Mask R-CNN: inference" in ln for ln in lines)
    assert lines[-1].startswith("0 checks failed")
