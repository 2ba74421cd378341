"""The benchmarks' counts and sizes are checked when parsed: one line, before a model is built."""

import argparse
import ast
import glob
import os

import pytest
import torch

from benchmarks.options import at_least, check_memory, device_option, positive_number
from panet_d2.engine.checks import machine_memory

from ..common import ROOT, load_script, start_script


def test_at_least():
    assert at_least(1)("3") == 3 and at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="^0: must be at least 1$"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^'x' is not an integer$"):
        at_least(1)("x")


def test_at_most_and_positive_number():
    assert at_least(1, 8)("8") == 8
    with pytest.raises(argparse.ArgumentTypeError, match="^9: must be at most 8$"):
        at_least(1, 8)("9")
    assert positive_number("0.5") == 0.5
    for text in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^'{text}': must be a finite numb"):
            positive_number(text)


def test_check_memory():
    """A quarter of the machine's memory is the most the inputs may take."""
    parser = argparse.ArgumentParser(prog="p")
    quarter = machine_memory() / 4
    check_memory(parser, quarter, "x")
    with pytest.raises(SystemExit):
        check_memory(parser, quarter + 1, "x")


def test_device_option():
    """cpu, cuda, cuda:N of a GPU there is; else one line (before: a traceback in the first run)."""
    assert device_option("cpu") == "cpu"
    for text in ("gpu", "meta", "cuda:x"):
        with pytest.raises(
            argparse.ArgumentTypeError, match=f"^'{text}': give cpu, cuda or cuda:N$"
        ):
            device_option(text)
    count = torch.cuda.device_count()
    where = f"this machine has {count} GPU" if count else "CUDA is not available on this machine"
    with pytest.raises(argparse.ArgumentTypeError, match=f"^'cuda:{count}': {where}"):
        device_option(f"cuda:{count}")
    if count:
        assert device_option("cuda:0") == "cuda:0"


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
        (
            "bench_model.py",
            ["--profile", "PANet R50", "--rows", "instance"],
            "--profile runs one row (not --rows) for one --task",
        ),
        ("bench_export.py", ["--opts", "MODEL.FOO", "1"], "Non-existent key: MODEL.FOO"),
        ("bench_export.py", ["--cls-scale", "3"], "--cls-scale: scales the classifier of --load "),
        (
            "bench_export.py",
            ["--config", "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml"],
            "its model is a PanopticPANet; this benchmark runs instance models (GeneralizedRCNN;",
        ),
        ("bench_afp_sampling.py", ["--height", "9000"], "--height: 9000: must be at most 8192"),
        (
            "accuracy_gate.py",
            ["--config-file", "x.yaml", "--weights", "x.pth", "--seed", "-1"],
            "argument --seed: -1: must be at least 0",
        ),
        (
            "bench_panoptic_merge.py",
            ["--num-instances", "100000", "--height", "8000", "--width", "8000"],
            "more than 1/4 of this machine's memory",
        ),
        (  # before the peaks and the runs
            "bench_export.py",
            ["--backends", "eager", "openvino-int8-heads", "--opts", "MODEL.MASK_ON", "False"],
            "--backends openvino-int8-heads quantises the mask and semantic heads; this model has "
            "neither (a detection model): it would run as fp32.",
        ),
    ]
    procs = [start_script(os.path.join("benchmarks", s), *a) for s, a, _ in cases]
    for (script, _, line), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"{script}: error: ") and line in last, last


def test_accuracy_gate_refuses_int8_heads_of_a_detection_model_first():
    """Before the eager evaluation (the weights do not exist: they would be read first)."""
    config = os.path.join("configs", "COCO-Detection", "panet_R_50_FPN_release_1x.yaml")
    args = ["--config-file", config, "--weights", "missing.pth", "--precisions", "int8-heads"]
    proc = start_script(os.path.join("benchmarks", "accuracy_gate.py"), *args)
    _, stderr = proc.communicate(timeout=120)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last == (
        "ERROR: --precisions int8-heads quantises the mask and semantic heads; this model has "
        "neither (a detection model): it would run as fp32."
    ), stderr


def test_accuracy_gate_reads_yacs_configs_only():
    """A LazyConfig: one line (Hydra's OverrideParseException on its yacs options before)."""
    config = os.path.join("configs", "quick_schedules", "panet_R_18_synth_lazy.py")
    args = ["--config-file", config, "--weights", "missing.pth"]
    proc = start_script(os.path.join("benchmarks", "accuracy_gate.py"), *args)
    _, stderr = proc.communicate(timeout=120)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "is a LazyConfig (.py): this command reads yacs .yaml" in last


def test_bench_export_without_an_onnx_backend():
    """Eager alone runs (it converted an ONNX file that was not exported: FileNotFoundError)."""
    args = ["--backends", "eager", "--repeats", "1", "--height", "128", "--width", "128"]
    args += ["--flops", "1", "--opts", "MODEL.RESNETS.DEPTH", "18"]
    args += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "INPUT.MIN_SIZE_TEST", "160"]
    proc = start_script(os.path.join("benchmarks", "bench_export.py"), *args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "| eager | " in stdout and "openvino" not in stdout


def test_profile_runs_repeats_after_a_warm_up(monkeypatch, capsys):
    """--profile times --repeats runs under torch.profiler, after one run outside it."""
    import benchmarks.bench_model as bench

    calls = []

    def run_inference(model, inputs, args):
        calls.append(torch.autograd.profiler._is_profiler_enabled)
        return model(inputs)

    monkeypatch.setattr(bench, "make_cfg", lambda *a: None)
    monkeypatch.setattr(bench, "build", lambda cfg, args: torch.nn.ReLU())
    monkeypatch.setattr(bench, "inference_inputs", lambda args, device: torch.ones(2))
    monkeypatch.setattr(bench, "run_inference", run_inference)
    args = argparse.Namespace(task="inference", device="cpu", repeats=3)
    bench.profile("PANet R50", args)
    assert calls == [False, True, True, True]
    assert "aten::relu" in capsys.readouterr().out


def test_accuracy_gate_held_out_split_of_the_models_kind(monkeypatch):
    """--num-images: the generated split's instances for an instance model (its panoptic view
    before: a KeyError 'panoptic_seg' after the eager evaluation), its panoptic view for a
    panoptic model."""
    gate = load_script(os.path.join("benchmarks", "accuracy_gate.py"), "accuracy_gate_views")
    seen = []

    def eager_metrics(cfg, weights, bf16, output):
        seen.append(tuple(cfg.DATASETS.TEST))
        raise StopIteration  # (the rest of the gate is not this test's)

    monkeypatch.setattr(gate, "eager_metrics", eager_metrics)
    for config in ("panet_R_18_synth_instance_smoke.yaml", "panoptic_panet_R_18_synth.yaml"):
        config = os.path.join(ROOT, "configs", "quick_schedules", config)
        argv = ["--config-file", config, "--weights", "w.pth", "--num-images", "2"]
        with pytest.raises(StopIteration):
            gate.gate(gate.get_parser().parse_args(argv + ["--no-eager-bf16"]), "unused")
    assert seen == [("panet_gate_n2_s99_val",), ("panet_gate_n2_s99_val_panoptic",)]
