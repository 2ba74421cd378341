"""The benchmarks' counts and sizes are checked when parsed: one line, before a model is built."""

import argparse
import ast
import glob
import os

import pytest

from benchmarks.options import at_least

from ..common import ROOT, start_script


def test_at_least():
    assert at_least(1)("3") == 3 and at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="^0: must be at least 1$"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^'x' is not an integer$"):
        at_least(1)("x")


def test_no_benchmark_option_is_an_unchecked_integer():
    """Every integer option of benchmarks/*.py goes through at_least (the seed excepted)."""
    unchecked = []
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                kinds = {k.arg: k.value for k in node.keywords}
                flag = node.args[0].value if node.args else "?"
                if getattr(kinds.get("type"), "id", None) == "int" and flag != "--seed":
                    unchecked.append(f"{os.path.basename(path)} {flag}")
    assert not unchecked


def test_bad_option_is_one_line():
    """Two benchmarks side by side: a count below its least value; a config key that is none."""
    cases = [
        ("bench_model.py", ["--threads", "0"], "argument --threads: 0: must be at least 1"),
        ("bench_export.py", ["--opts", "MODEL.FOO", "1"], "Non-existent key: MODEL.FOO"),
    ]
    procs = [start_script(os.path.join("benchmarks", s), *a) for s, a, _ in cases]
    for (script, _, line), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"{script}: error: ") and last.endswith(line), last
