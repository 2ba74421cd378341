# -*- coding: utf-8 -*-
"""
tools/run_d2_tool.py: Detectron2's own tools/*.py and demo/demo.py on the project's yacs configs
(an instance and a panoptic quick schedule), found the way the command finds them
(tools/d2_tools.py); skipped only where no Detectron2 tools are installed anywhere findable.

The tools run in this process (as the command runs them), on a small generated dataset
registered here; what they log is checked against the model built here and against counts made
by hand from the paper's structure.
"""

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import sys
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import get_cfg as d2_get_cfg
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from panet_d2 import PANetCheckpointer, model_zoo
from panet_d2.analysis import FLOP_HANDLES
from panet_d2.errors import CheckpointError, ConfigError

from ..common import ROOT, error_exit, load_script, run_script, synthetic_datasets

d2_tools = load_script("tools/d2_tools.py", "panet_d2_tools_finder")
pytestmark = pytest.mark.usefixtures("single_thread")

ENTRY_POINT = os.path.join(ROOT, "tools", "run_d2_tool.py")
PREFIX = (
    "test_run_d2_tool"  # 4 + 6 generated images (benchmark warms up on 5), in a temporary cache
)
CONFIGS = {
    "instance": ("quick_schedules/panet_R_18_synth_instance.yaml", PREFIX + "_{}"),
    "panoptic": ("quick_schedules/panoptic_panet_R_18_synth.yaml", PREFIX + "_{}_panoptic"),
}


@pytest.fixture(scope="module")
def entry():
    return load_script(ENTRY_POINT, "panet_run_d2_tool")


def _require(tool):
    """The path of Detectron2's ``tool``, as the command finds it; skips if it is nowhere."""
    relpath = d2_tools.tool_relpath(tool)
    path = d2_tools.find_detectron2_file(relpath)
    if path is None:
        looked = ", ".join(r for r, _ in d2_tools.detectron2_roots())
        pytest.skip("Detectron2's {} is not installed (looked in {})".format(relpath, looked))
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    splits = {"train": {"num_images": 4, "seed": 1}, "val": {"num_images": 6, "seed": 2}}
    with synthetic_datasets(tmp_path_factory, PREFIX, splits) as root:
        yield root


@pytest.fixture
def logs():
    """The messages logged to the "detectron2", "fvcore" and "panet_d2" loggers (the tools set
    these up themselves, which stops them propagating to pytest's handler)."""
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("detectron2", "fvcore", "panet_d2")]
    for lg in loggers:
        lg.addHandler(handler)
    yield records
    for lg in loggers:
        lg.removeHandler(handler)


def _config(kind, *opts):
    """(config file, yacs options): the kind's quick schedule on the small generated dataset."""
    name, dataset = CONFIGS[kind]
    datasets = ["DATASETS.TRAIN", "('{}',)".format(dataset.format("train"))]
    datasets += ["DATASETS.TEST", "('{}',)".format(dataset.format("val"))]
    return model_zoo.get_config_file(name), datasets + list(opts)


def _model(kind):
    cfg = model_zoo.get_config(CONFIGS[kind][0])
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def _size(text):
    """fvcore's table sizes ("21.234M", "0.258G", "36.928K", "99") as numbers."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def _table_row(text, module):
    rows = re.findall(r"^\|\s*{}\s*\|([^\n]*)\|$".format(re.escape(module)), text, re.M)
    assert rows, "no row {!r} in the table".format(module)
    return [c.strip() for c in rows[0].split("|")]


def _cpu_note_checked(entry, logs, run):
    """Runs ``run()``; without CUDA, the CPU fallback is logged exactly once."""
    entry._LOGGED.clear()
    result = run()
    notes = [m for m in logs if "CUDA is not available, running on the CPU" in m]
    assert len(notes) == (0 if torch.cuda.is_available() else 1), notes
    return result


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_analyze_model(entry, datasets, logs, kind):
    """analyze_model --tasks flop parameter structure: the project's model, counted."""
    _require("analyze_model")
    # every detection of the randomly initialised model kept, so that the mask head (and its FF
    # path) runs whatever the random state left by earlier tests (with 0.05, after
    # tests/export/test_torchscript.py's seeded tests, the instance model detected nothing)
    config, opts = _config(kind, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    argv = ["analyze_model", "--tasks", "flop", "parameter", "structure", "-n", "1"]
    _cpu_note_checked(entry, logs, lambda: entry.main(argv + ["--config-file", config] + opts))
    text = "\n".join(logs)
    model = _model(kind)
    cfg = model_zoo.get_config(CONFIGS[kind][0])

    # structure: the model this config builds
    assert "Model Structure:\n" + str(model) in text
    assert type(model.backbone).__name__ == "PAFPN"
    # parameters: fvcore's table of this model
    n = sum(p.numel() for p in model.parameters())
    assert _table_row(text, "model")[0] in ("{:.1f}M".format(n / 1e6), "{:.3f}M".format(n / 1e6))
    # FLOPs: the bottom-up path's first 3x3 stride-2 conv (N2 -> N3, paper Fig. 2) on the
    # first 192x192 test image: one multiply-add per output value and kernel tap
    c = cfg.MODEL.FPN.OUT_CHANNELS
    h = w = cfg.INPUT.MIN_SIZE_TEST // 8
    params, flops = _table_row(text, "backbone.bpa_down3")
    assert _size(params) == pytest.approx(c * c * 9 + c, rel=1e-3)
    assert _size(flops) == pytest.approx(h * w * c * c * 9, rel=1e-3)
    assert _size(_table_row(text, "roi_heads.mask_head.fc_fusion")[1]) > 0  # FF path ran
    if kind == "panoptic":
        assert type(model).__name__ == "PanopticPANet"
        assert _size(_table_row(text, "sem_seg_head")[1]) > 0
    assert re.search(r"Total GFlops: [0-9.]+", text)


def test_analyze_model_activations_of_the_panoptic_model(entry, datasets, logs):
    """--tasks activation on the panoptic config (Detectron2's tracer alone cannot flatten its
    segments_info), without torch's "torch.jit.script is deprecated" warnings."""
    _require("analyze_model")
    config, opts = _config("panoptic")
    argv = ["analyze_model", "--tasks", "activation", "-n", "2", "--config-file", config]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry.main(argv + opts)
    assert not [w for w in caught if "torch.jit.script` is deprecated" in str(w.message)]
    totals = re.findall(r"Total \(Million\) Activations: ([0-9.e+-]+)", "\n".join(logs))
    assert len(totals) == 1, logs[-5:]
    # at least the FPN's outputs at stride 4 of a 192x192 test image (the other levels, the
    # bottom-up path and the heads come on top)
    cfg = model_zoo.get_config(CONFIGS["panoptic"][0])
    side = cfg.INPUT.MIN_SIZE_TEST // 4
    assert float(totals[0]) * 1e6 > cfg.MODEL.FPN.OUT_CHANNELS * side * side


@pytest.mark.parametrize(
    "tasks,n,least",
    [(["activation"], "1", 2), (["flop", "parameter"], "0", 1), (["flop"], "-3", 1)],
)
def test_analyze_model_counts_of_too_few_inputs(entry, monkeypatch, tasks, n, least):
    """Detectron2 0.6's analyze_model averages activations over n - 1 inputs (1: a
    ZeroDivisionError after the count) and names an undefined variable with no input: refused
    before the model is built."""
    _require("analyze_model")
    monkeypatch.setattr(entry, "panet_d2_environment", None)  # not reached
    argv = ["analyze_model", "--tasks", *tasks, "--num-inputs", n, "--config-file", "x.yaml"]
    msg = error_exit(entry.main, argv)
    assert msg.startswith(
        "ERROR: analyze_model --num-inputs {}: --tasks {} needs at least {} ".format(
            n, tasks[0], least
        )
    ), msg


@pytest.mark.parametrize("task", ["data", "data_advanced"])
def test_benchmark_data_on_numpy_2(entry, monkeypatch, task):
    """Detectron2 0.6's data benchmark calls numpy.percentile(interpolation=...), gone in NumPy 2
    (a TypeError after the data loading): refused before it runs."""
    import numpy as np

    _require("benchmark")
    monkeypatch.setattr(entry, "panet_d2_environment", None)  # not reached
    argv = ["benchmark", "--task", task, "--config-file", "x.yaml"]
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("NumPy < 2 takes interpolation=")
    msg = error_exit(entry.main, argv)
    assert msg.startswith(f"ERROR: benchmark --task {task}: Detectron2 0.6's data benchmark calls")
    with pytest.raises(TypeError):  # what the benchmark would meet
        np.percentile([1.0, 2.0], 50, interpolation="nearest")


def test_training_scripts_refuse_weights_that_are_no_file(entry, tmp_path):
    """Detectron2's train_net (MODEL.WEIGHTS) and lazyconfig_train_net (train.init_checkpoint)
    assert after building the model; here one line before, unless --resume finds
    last_checkpoint (then the weights are not read)."""
    _require("train_net")
    config, opts = _config("instance", "OUTPUT_DIR", str(tmp_path / "out"))
    missing = str(tmp_path / "nope.pth")
    argv = ["train_net", "--eval-only", "--config-file", config, *opts, "MODEL.WEIGHTS", missing]
    msg = error_exit(entry.main, argv)
    assert msg.startswith("ERROR: Checkpoint {!r} does not exist (MODEL.WEIGHTS).".format(missing))
    lazy = OmegaConf.create({"train": {"init_checkpoint": str(tmp_path), "output_dir": "o"}})
    with pytest.raises(CheckpointError, match=r"is a folder \(train.init_checkpoint\)"):
        entry._check_weights(lazy, argparse.Namespace(resume=True))  # no o/last_checkpoint
    lazy.train.output_dir = str(tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    entry._check_weights(lazy, argparse.Namespace(resume=True))  # resumes: not read


def test_detectron2_scripts_refuse_weights_that_are_not_numbers(entry, datasets, tmp_path):
    """Detectron2's train_net --eval-only evaluated NaN weights (PQ 0); its checkpointer is
    panet_d2's inside the command: refused in one line."""
    _require("train_net")
    config, opts = _config("instance", "OUTPUT_DIR", str(tmp_path / "out"))
    state = _model("instance").state_dict()
    key = "backbone.bottom_up.stem.conv1.weight"
    state[key][0] = float("nan")
    torch.save({"model": state}, str(tmp_path / "nan.pth"))
    argv = ["train_net", "--eval-only", "--config-file", config, *opts]
    msg = error_exit(entry.main, argv + ["MODEL.WEIGHTS", str(tmp_path / "nan.pth")])
    assert "was not loaded: its weights hold NaN or inf: {} has".format(key) in msg, msg


def test_list_says_where_the_tools_were_found(entry, capsys):
    entry.main(["--list"])
    lines = capsys.readouterr().out.splitlines()
    roots = d2_tools.detectron2_roots()
    assert len(lines) == len(roots)
    for line, (root, how) in zip(lines, roots):
        assert line.startswith("In {} ({}): ".format(root, how)), line
        has = os.path.isfile(os.path.join(root, "tools", "analyze_model.py"))
        assert ("analyze_model" in line.split(": ", 1)[1].split()) == has, line


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_visualize_data(entry, datasets, tmp_path, kind):
    """visualize_data --source annotation: one picture per training image, annotations drawn."""
    import cv2

    _require("visualize_data")
    config, opts = _config(kind)
    out = tmp_path / "vis"
    entry.main(
        ["visualize_data", "--source", "annotation", "--output-dir", str(out)]
        + ["--config-file", config]
        + opts
    )
    dicts = DatasetCatalog.get(CONFIGS[kind][1].format("train"))
    assert sorted(os.listdir(out)) == sorted(os.path.basename(d["file_name"]) for d in dicts)
    for d in dicts:
        drawn = cv2.imread(str(out / os.path.basename(d["file_name"])))
        image = cv2.imread(d["file_name"])
        assert drawn.shape == image.shape
        assert (drawn != image).any(), "nothing drawn on " + d["file_name"]


def test_visualize_data_output_dir_that_cannot_be_a_folder(entry, monkeypatch, tmp_path):
    """visualize_data made ``--output-dir`` with os.makedirs after the dataset loaded: under a
    regular file, a FileExistsError traceback. One line before the tool runs (both spellings)."""
    _require("visualize_data")
    monkeypatch.setattr(entry, "panet_d2_environment", None)  # not reached
    (tmp_path / "file").write_text("")
    under, itself = str(tmp_path / "file" / "vis"), str(tmp_path / "file")
    argv = ["visualize_data", "--source", "annotation", "--config-file", "x.yaml"]
    msg = error_exit(entry.main, argv + ["--output-dir", under])
    assert msg.startswith("ERROR: --output-dir={!r} cannot be created: ".format(under)), msg
    msg = error_exit(entry.main, argv + ["--output-dir=" + itself])
    assert msg.startswith("ERROR: --output-dir={!r} is a file: give a folder".format(itself)), msg
    # a tool without the option: its own parser refuses it; no folder made for it here
    monkeypatch.setattr(entry, "panet_d2_environment", lambda script: contextlib.nullcontext())
    made = tmp_path / "made"
    with pytest.raises(SystemExit):
        entry.run_tool(_require("benchmark"), ["--output-dir", str(made)])
    assert not made.exists()


@pytest.mark.parametrize("kind", ["panoptic"])  # its detector is the instance model's
def test_benchmark_eval(entry, datasets, logs, kind):
    """benchmark --task eval (300 inferences, Detectron2's fixed count): small inputs."""
    pytest.importorskip("psutil", reason="Detectron2's tools/benchmark.py imports psutil")
    _require("benchmark")
    small = ["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "32"]
    small += ["MODEL.RPN.PRE_NMS_TOPK_TEST", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "5"]
    config, opts = _config(kind, *small)
    entry.main(["benchmark", "--task", "eval", "--config-file", config] + opts)
    text = "\n".join(logs)
    assert type(_model(kind)).__name__ in text  # "Model:\n" + the model
    assert re.search(r"300 iters in [0-9.]+ seconds", text)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_detectron2_train_net(entry, datasets, logs, tmp_path, kind):
    """Detectron2's train_net.py: a few iterations, a checkpoint, evaluation by its evaluators."""
    _require("train_net")
    out = tmp_path / "out"
    config, opts = _config(
        kind,
        *["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()"],
        *["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(out)],
    )
    _cpu_note_checked(
        entry, logs, lambda: entry.main(["train_net", "--config-file", config] + opts)
    )
    assert {"model_final.pth", "log.txt", "config.yaml", "metrics.json"} <= set(os.listdir(out))
    text = "\n".join(logs)
    assert "iter: 1 " in text
    tasks = {"bbox", "segm"} | ({"panoptic_seg", "sem_seg"} if kind == "panoptic" else set())
    for task in tasks:
        assert "copypaste: Task: " + task in text
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    assert "segm/AP" in rows[-1] and (kind != "panoptic" or "panoptic_seg/PQ" in rows[-1])
    # the panet_d2 logger writes into OUTPUT_DIR too (as the project's train_net.py)
    assert os.path.isfile(out / "log.txt")


def test_demo(entry, datasets, tmp_path):
    """Detectron2's demo/demo.py (its predictor.py imported by its internal module path)."""
    _require("demo")
    start_method = multiprocessing.get_start_method(allow_none=True)  # the demo sets "spawn"
    config, opts = _config("panoptic")
    image = DatasetCatalog.get(PREFIX + "_val")[0]["file_name"]
    out = tmp_path / "demo.png"
    entry.main(
        ["demo", "--config-file", config, "--input", image, "--output", str(out), "--opts"] + opts
    )
    assert out.is_file() and not any(k.startswith("vision") for k in sys.modules)
    # an --output folder that does not exist yet: created (Detectron2's demo needs it)
    images = [d["file_name"] for d in DatasetCatalog.get(PREFIX + "_val")[:2]]
    folder = tmp_path / "new" / "demo"
    entry.main(
        ["demo", "--config-file", config, "--input"]
        + images
        + ["--output", str(folder)]
        + ["--opts"]
        + opts
    )
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(i) for i in images)
    multiprocessing.set_start_method(start_method, force=True)  # as the other tests expect it


def test_patches_stay_inside_the_command(entry, datasets):
    """After a tool ran: Detectron2's own get_cfg, default_setup and launch again."""
    import detectron2.config
    import detectron2.engine

    _require("visualize_data")
    import detectron2.checkpoint
    import detectron2.engine.defaults
    import detectron2.utils.analysis

    def patched():
        return (
            detectron2.config.get_cfg,
            detectron2.engine.default_setup,
            detectron2.engine.launch,
            detectron2.checkpoint.DetectionCheckpointer,
            detectron2.engine.defaults.DetectionCheckpointer,
            detectron2.engine.defaults.create_ddp_model,
            torch.nn.parallel.DistributedDataParallel,
            "get" in vars(DatasetCatalog),  # Detectron2's method, not an attribute of its own
        )

    before = patched()
    adapter, filters = detectron2.utils.analysis.TracingAdapter, list(warnings.filters)
    with entry.panet_d2_environment(d2_tools.find_detectron2_tool("visualize_data")):
        cfg = detectron2.config.get_cfg()
        assert "PAFPN" in cfg.MODEL and detectron2.config.get_cfg is not before[0]
        assert detectron2.utils.analysis.TracingAdapter is not adapter
        # the trainer's and the scripts' checkpointer: panet_d2's
        assert issubclass(patched()[3], PANetCheckpointer) and patched()[3] is patched()[4]
    after = patched()
    assert after == before and "PAFPN" not in d2_get_cfg().MODEL
    assert detectron2.utils.analysis.TracingAdapter is adapter and warnings.filters == filters


def test_option_and_dataset_typos_are_one_line(entry, datasets):
    """yacs's AssertionError and Detectron2's KeyError listing every dataset: one line each."""
    _require("analyze_model")
    config, opts = _config("panoptic")
    argv = ["analyze_model", "--tasks", "parameter", "--config-file", config]
    msg = error_exit(entry.main, argv + ["SOLVER.MAX_ITERS", "2"])
    assert (
        msg == "ERROR: The command-line options ['SOLVER.MAX_ITERS', '2']: Non-existent key: "
        "SOLVER.MAX_ITERS"
    )
    typo = CONFIGS["panoptic"][1].format("vall")
    argv = ["analyze_model", "--tasks", "flop", "--config-file", config]
    msg = error_exit(entry.main, argv + opts[:2] + ["DATASETS.TEST", "('{}',)".format(typo)])
    assert msg.startswith(
        "ERROR: Dataset {!r} in the tool's config or arguments is not registered. Did you mean: "
        "{!r}".format(typo, CONFIGS["panoptic"][1].format("val"))
    )


def test_lazyconfig_option_typos_are_one_line(entry):
    """Detectron2's LazyConfig.apply_overrides adds a key the config has not: a typo trained
    the config's iterations. Inside the command: refused, with the keys it may have meant."""
    from detectron2.config import LazyConfig

    cfg_path = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_lazy.py")
    cfg = LazyConfig.load(cfg_path)
    with entry._existing_lazy_keys_only():
        with pytest.raises(ConfigError) as e:
            LazyConfig.apply_overrides(cfg, ["train.max_iter=3", "train.max_iters=2"])
        assert str(e.value).startswith(
            "LazyConfig option 'train.max_iters=2': train has no key 'max_iters' (did you mean: "
            "max_iter?); keys: amp, "
        )
        with pytest.raises(
            ConfigError, match=r"^LazyConfig option 'trian.max_iter=2': the config "
        ):
            LazyConfig.apply_overrides(cfg, ["trian.max_iter=2"])
        # an argument of Detectron2's RPN that the config leaves at its default: taken; a typo
        # of it: refused
        rpn = "model.proposal_generator."
        assert "min_box_size" not in cfg.model.proposal_generator
        with pytest.raises(ConfigError, match=r"proposal_generator has no key 'min_box_sizes'"):
            LazyConfig.apply_overrides(cfg, [rpn + "min_box_sizes=4.0"])
        LazyConfig.apply_overrides(
            cfg, ["train.max_iter=2", "+train.note=1", rpn + "min_box_size=4.0"]
        )
        # values Detectron2's lazyconfig_train_net.py takes unchecked (tracebacks, or 0 detections)
        for option, message in [
            ("optimizer.lr=-1.0", "optimizer.lr=-1.0: must be 0 or positive, and finite."),
            ("train.max_iter=0", "train.max_iter=0: must be an integer >= 1."),
            ("dataloader.train.total_batch_size=0", "total_batch_size=0: must be an integer >= 1."),
            (
                "model.roi_heads.box_predictor.test_score_thresh=2.0",
                "test_score_thresh=2.0: must be a number in [0, 1].",
            ),
        ]:
            with pytest.raises(ConfigError) as e:
                LazyConfig.apply_overrides(LazyConfig.load(cfg_path), [option])
            assert str(e.value).endswith(message), str(e.value)
    assert cfg.train.max_iter == 2 and cfg.train.note == 1
    assert instantiate(cfg.model.proposal_generator).min_box_size == 4.0
    LazyConfig.apply_overrides(cfg, ["train.other=1"])  # Detectron2's again, after the command
    assert cfg.train.other == 1


def test_not_found_names_where_it_looked(entry, tmp_path, monkeypatch, capsys):
    # a checkout given explicitly: only there
    msg = error_exit(entry.main, ["--d2-root", str(tmp_path), "analyze_model", "--tasks", "flop"])
    assert msg.startswith("ERROR: Detectron2's tools/analyze_model.py was not found")
    assert os.path.join(str(tmp_path), "tools", "analyze_model.py") in msg and "--d2-root" in msg
    # $DETECTRON2_ROOT likewise
    monkeypatch.setenv(d2_tools.ENV_VAR, str(tmp_path / "d2"))
    with pytest.raises(d2_tools.Detectron2ToolNotFoundError, match=r"\$DETECTRON2_ROOT"):
        d2_tools.find_detectron2_tool("demo")
    monkeypatch.delenv(d2_tools.ENV_VAR)
    # not found anywhere: every place looked in is named
    with pytest.raises(d2_tools.Detectron2ToolNotFoundError) as e:
        d2_tools.find_detectron2_tool("no_such_tool")
    for root, how in d2_tools.detectron2_roots():
        assert os.path.join(root, "tools", "no_such_tool.py") in str(e.value) and how in str(
            e.value
        )


def test_finder_reads_the_installed_checkout(tmp_path, monkeypatch):
    """pip install <checkout> records the checkout in direct_url.json: searched after the
    folder of the package; a non-file URL adds nothing."""
    from importlib import metadata

    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    checkout = tmp_path / "detectron2 checkout"
    (checkout / "tools").mkdir(parents=True)
    (checkout / "tools" / "only_here.py").write_text("")
    url = "file://" + str(checkout).replace(" ", "%20")
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist(json.dumps({"url": url})))
    roots = d2_tools.detectron2_roots()
    assert roots[-1][0] == str(checkout) and len(roots) == 2
    assert d2_tools.find_detectron2_tool("only_here") == str(checkout / "tools" / "only_here.py")
    assert "only_here" in d2_tools.list_detectron2_tools()
    monkeypatch.setattr(
        metadata, "distribution", lambda name: Dist('{"url": "https://github.com/x/y.git"}')
    )
    assert len(d2_tools.detectron2_roots()) == 1


def test_tool_names():
    assert d2_tools.tool_relpath("analyze_model") == "tools/analyze_model.py"
    assert d2_tools.tool_relpath("tools/train_net.py") == "tools/train_net.py"
    assert d2_tools.tool_relpath("deploy/export_model") == "tools/deploy/export_model.py"
    assert d2_tools.tool_relpath("demo") == d2_tools.tool_relpath("demo/demo.py") == "demo/demo.py"
    # names only: a path is refused (tests/test_config_files_are_data.py: through the command)
    for path in ("../x", "/abs/x", "./train_net", "tools/../x", "deploy/", "_private", "a\\..\\b"):
        with pytest.raises(d2_tools.Detectron2ToolNameError, match="not a name"):
            d2_tools.tool_relpath(path)


def test_lazyconfig_launcher_uses_the_same_finder(monkeypatch, tmp_path):
    launcher = load_script("tools/lazyconfig_train_net.py", "panet_lazy_launcher")
    monkeypatch.delenv(launcher.ENV_VAR, raising=False)
    expected = d2_tools.find_detectron2_file("tools/lazyconfig_train_net.py")
    assert launcher.find_detectron2_script() == expected
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "lazyconfig_train_net.py").write_text("")
    monkeypatch.setenv(d2_tools.ENV_VAR, str(tmp_path))
    assert launcher.find_detectron2_script() == str(tmp_path / "tools" / "lazyconfig_train_net.py")
    # not found: the same message, naming where it looked
    line = error_exit(launcher.main, ["--d2-root", str(tmp_path / "none"), "--config-file", "x.py"])
    assert line.startswith("ERROR: Detectron2's tools/lazyconfig_train_net.py was")
    assert os.path.join(str(tmp_path / "none"), "tools", "lazyconfig_train_net.py") in line


FAKE_TOOL = """
import json, os, sys
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import launch


def main(config_file, out):
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from detectron2.engine.defaults import create_ddp_model

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.freeze()
    info = dict(device=cfg.MODEL.DEVICE, world=comm.get_world_size(), pafpn="PAFPN" in cfg.MODEL)
    # as Detectron2's plain_train_net / benchmark and its DefaultTrainer build DDP
    DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[comm.get_local_rank()])
    create_ddp_model(torch.nn.Linear(2, 2))
    with open(os.path.join(out, "rank{}.json".format(comm.get_rank())), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    launch(main, 2, dist_url="auto", args=(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="launches 2 processes"
)
def test_launch_children_run_in_the_same_environment(tmp_path):
    """A tool that launches 2 processes (Detectron2's launch; gloo on CPUs): each process reads
    the project's config keys, applies the CPU fallback and builds DDP models of CPU modules as
    Detectron2's scripts do (with device_ids, which DDP refuses for them)."""
    d2_root = tmp_path / "d2"
    (d2_root / "tools").mkdir(parents=True)
    (d2_root / "tools" / "two_processes.py").write_text(FAKE_TOOL)
    config = model_zoo.get_config_file(CONFIGS["instance"][0])
    proc = run_script(ENTRY_POINT, "--d2-root", d2_root, "two_processes", config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for rank in range(2):
        with open(tmp_path / "rank{}.json".format(rank)) as f:
            assert json.load(f) == dict(device=device, world=2, pafpn=True)


def test_tool_needing_a_missing_module(entry, tmp_path, capsys):
    """A Detectron2 tool that imports a module which is not installed: one line naming it and
    the install command, exit code 1 (not an input error)."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "needs_module.py").write_text("import no_such_module_panet_d2\n")
    with pytest.raises(SystemExit) as e:
        entry.main(["--d2-root", str(tmp_path), "needs_module"])
    assert e.value.code == 1
    assert str(e.value).startswith("ERROR: ") and "'no_such_module_panet_d2'" in str(e.value)
    assert "pip install no_such_module_panet_d2" in capsys.readouterr().err


def test_detectron2_train_net_refuses_scale_momentum(entry, datasets, tmp_path):
    """Detectron2's train_net.py has no momentum rescaling: a config asking for it is refused in
    one line before training (this project's train_net.py does it)."""
    _require("train_net")
    config, opts = _config("instance", "SOLVER.SCALE_MOMENTUM", "True", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        entry.main(["train_net", "--config-file", config] + opts)
    assert "SOLVER.SCALE_MOMENTUM=True" in str(e.value) and "train_net.py" in str(e.value)
    assert not os.path.exists(tmp_path / "model_final.pth")


# ---- fvcore: no registry of op handles (the UPSTREAM-WORKAROUND fvcore-op-handle-table) ---------
def test_fvcore_still_skips_panet_ops():
    """Fails once fvcore counts every op of PANet by default: remove fvcore_op_handles
    (and analysis.FLOP_HANDLES)."""
    table = sys.modules["fvcore.nn.flop_count"]._DEFAULT_SUPPORTED_OPS
    assert not set(FLOP_HANDLES) <= set(table)


def test_fvcore_op_handles_are_scoped(entry):
    table = sys.modules["fvcore.nn.flop_count"]._DEFAULT_SUPPORTED_OPS
    before = dict(table)
    with entry.fvcore_op_handles(FLOP_HANDLES):
        assert all(table[k] is v for k, v in FLOP_HANDLES.items())
    assert table == before
