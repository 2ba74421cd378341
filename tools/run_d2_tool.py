#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Runs one of Detectron2's own scripts (``tools/*.py``: analyze_model, visualize_data, benchmark,
train_net, plain_train_net, ...; ``demo/demo.py``) on panet_d2's configs, with nothing to write:

    python3 tools/run_d2_tool.py analyze_model --tasks flop \\
        --config-file configs/quick_schedules/panet_R_18_synth_instance.yaml
    python3 tools/run_d2_tool.py visualize_data --source annotation --output-dir out/vis \\
        --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml
    python3 tools/run_d2_tool.py --d2-root /path/to/detectron2 demo --config-file ... --input ...

``TOOL`` is the script's name ("analyze_model", "tools/train_net.py", "deploy/export_model",
"demo"); the arguments after it are the script's own. Only Detectron2's own scripts run: a name
of its ``tools/`` or "demo", never a path (absolute, "..", "./": refused in one line listing the
names, ``--list``). Detectron2's scripts are found by ``tools/d2_tools.py`` (``--d2-root`` or
``$DETECTRON2_ROOT``, else next to the installed ``detectron2`` package, else the source checkout
it was installed from); when none holds the script, the error names every place looked in.

The script runs in this process, as ``__main__``, after ``import panet_d2`` (its models and
datasets registered). For this process only:

* fvcore's FLOP analyses (so ``analyze_model --tasks flop``) count PANet's ops
  (``panet_d2.analysis.FLOP_HANDLES``, through :func:`fvcore_op_handles`);

* ``detectron2.config.get_cfg()`` returns Detectron2's defaults plus panet_d2's keys
  (``add_panet_config``), so the scripts read the project's yacs files; its files (and their
  ``_BASE_`` files) are read as data, checked as the project's entry points check theirs
  (``panet_d2.config.CheckedConfigFile``, whatever ``allow_unsafe`` the script passes): a Python
  tag, or YAML aliases that stand for more than 10,000 values, are refused in one line naming
  the file;
* ``LazyConfig.load`` reads ``.yaml`` files as data too (``yaml.safe_load``, aliases bounded;
  Detectron2 uses PyYAML's unsafe loader) and gives a config file's syntax error as one line
  "file:line" (``panet_d2.config.lazyconfig_files_as_data``). A LazyConfig ``.py`` file is Python
  code, run as it loads (as in Detectron2): give only files you trust, by their path;
* when such a config is frozen, ``panet_d2.engine.adapt_config_to_machine`` applies (MODEL.DEVICE
  "cuda" becomes "cpu" without CUDA; AMP off on the CPU), logged once;
* ``detectron2.engine.default_setup`` also sets up the "panet_d2" logger into OUTPUT_DIR (of a
  LazyConfig: ``train.output_dir``), as this project's train_net.py does, refuses to train
  a config with SOLVER.SCALE_MOMENTUM True (Detectron2's trainers do not rescale momentum), and
  weights (MODEL.WEIGHTS, ``train.init_checkpoint``) that are no file, unless resumed;
* Detectron2's ``DetectionCheckpointer`` is panet_d2's (``PANetCheckpointer``): a checkpoint is
  read as data, and weights that hold NaN or inf, or do not fit the model (but a training run's
  class-dependent predictors), are refused in one line;
* ``detectron2.engine.launch`` with several processes: each child process applies the same
  before running the script (they start from this file); on CPUs (gloo), the DDP model that
  Detectron2's ``create_ddp_model``, ``plain_train_net`` and ``benchmark`` build is given no
  ``device_ids`` (DDP refuses them for a CPU model);
* a config option yacs refuses (an unknown key, a value of another type, an odd number of
  options) and a dataset name that is not registered are one line, with the names it may have
  meant (Detectron2: a traceback, listing every registered dataset); so is a LazyConfig option
  ``key=value`` whose key the config has not (Detectron2 adds it, and nothing reads it: a typo
  such as ``train.max_iters=2`` trained the config's iterations); an argument that a LazyCall's
  target takes but the config leaves at its default is taken; ``+key=value`` adds a key;
* ``demo/demo.py`` of current Detectron2 imports its ``predictor.py`` by an internal path
  (``vision.fair.detectron2.demo.predictor``): that name is made to point to the
  ``predictor.py`` next to the demo; its ``--output`` folder is created when it does not exist
  (Detectron2's demo needs it: it writes a file of that name otherwise, or stops with an
  AssertionError for several inputs);
* ``analyze_model --tasks activation`` traces the model with the non-tensor outputs left out, as
  its ``--tasks flop`` does (Detectron2's ``activation_count_operators`` traces it with
  ``TracingAdapter(allow_non_tensor=False)``, which a panoptic model's ``segments_info`` stops);
* ``analyze_model --num-inputs`` below 2 with ``--tasks activation`` (below 1 with ``flop``) is
  refused in one line (Detectron2 0.6 divides the activation counts by the inputs minus one);
* ``benchmark --task data`` (or ``data_advanced``) is refused in one line with NumPy 2 (Detectron2
  0.6's data benchmark calls ``numpy.percentile(interpolation=...)``, which NumPy 2 removed);
* torch's ``FutureWarning`` "``torch.jit.script`` is deprecated", which Detectron2's tracing
  (``analyze_model``'s counts, ``deploy/export_model``) gives for each ``@script_if_tracing``
  helper it scripts, is not shown.
"""

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import runpy
import sys
import types
import warnings
from unittest import mock

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
for _path in (ROOT, TOOLS):  # the package; d2_tools.py next to this file (also when imported)
    if _path not in sys.path:
        sys.path.insert(0, _path)

# the script a child process of ``launch`` runs, set by the parent (see _launch_patch)
CHILD_ENV_VAR = "PANET_D2_RUN_D2_TOOL_SCRIPT"
# Detectron2's scripts that train a yacs config (and would ignore SOLVER.SCALE_MOMENTUM)
TRAINING_SCRIPTS = ("train_net.py", "plain_train_net.py")
_CHILD_ENVIRONMENT = None
logger = logging.getLogger("panet_d2.run_d2_tool")


def get_parser():
    from d2_tools import ENV_VAR

    parser = argparse.ArgumentParser(
        description="Run one of Detectron2's tools/*.py or demo/demo.py on panet_d2's configs.",
        usage="%(prog)s [--d2-root DIR] TOOL [TOOL's arguments ...]",
    )
    parser.add_argument(
        "--d2-root",
        metavar="DIR",
        help="a Detectron2 source checkout holding tools/ and demo/ (default: ${}, else next to "
        "the installed detectron2 package, else the checkout it was installed from)".format(
            ENV_VAR
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the scripts found and exit")
    parser.add_argument(
        "tool", nargs="?", help='e.g. analyze_model, visualize_data, benchmark, train_net, "demo"'
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
    return parser


def _panet_cfg_node_class():
    from detectron2.config import CfgNode

    from panet_d2.config import CheckedConfigFile
    from panet_d2.engine import adapt_config_to_machine

    class PANetToolCfgNode(CfgNode):
        """Detectron2's CfgNode that adapts itself to the machine when frozen (root node), and
        reads its files as the project's entry points do: as data, checked
        (``panet_d2.config.CheckedConfigFile``; its unsafe-loading flag ignored)."""

        @classmethod
        def load_yaml_with_base(cls, filename, allow_unsafe=False):
            return CheckedConfigFile.load_yaml_with_base(filename)

        def merge_from_file(self, cfg_filename, allow_unsafe=False):
            with _config_errors("Config file {!r}".format(cfg_filename)):
                return super().merge_from_file(cfg_filename, allow_unsafe)

        def merge_from_list(self, cfg_list):
            with _config_errors("The command-line options {}".format(list(cfg_list))):
                return super().merge_from_list(cfg_list)

        def freeze(self):
            if "MODEL" in self and "SOLVER" in self:
                for note in adapt_config_to_machine(self):
                    _log_once(note)
            super().freeze()

    return PANetToolCfgNode


@contextlib.contextmanager
def _config_errors(where):
    """yacs's errors of a merge (an unknown key, a value of another type, an odd number of
    options) as one :class:`ConfigError` naming ``where``, as the project's entry points."""
    from panet_d2.errors import ConfigError, InputError

    try:
        yield
    except InputError:
        raise
    except (AssertionError, KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError("{}: {}".format(where, msg)) from e


def _registered_datasets_only():
    """While the block runs, ``DatasetCatalog.get`` of a name that is not registered is one
    :class:`DatasetError` with the names it may have meant (Detectron2 lists all of them)."""
    from detectron2.data import DatasetCatalog

    from panet_d2.engine.checks import check_registered

    d2_get = DatasetCatalog.get

    def get(name):
        check_registered(name, "the tool's config or arguments")
        return d2_get(name)

    return mock.patch.object(DatasetCatalog, "get", get)  # (an attribute of the instance)


def _lazy_call_takes(node, name):
    """Whether the LazyCall ``node``'s target takes the keyword argument ``name`` (``instantiate``
    passes it the node's keys)."""
    from detectron2.utils.registry import locate

    try:
        target = node.get("_target_")
        target = locate(target) if isinstance(target, str) else target
        params = inspect.signature(target).parameters.values()
    except Exception:  # no target, or one without a signature
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _existing_lazy_keys_only():
    """While the block runs, ``LazyConfig.apply_overrides`` refuses an option ``key=value`` whose
    key the config has not (a typo would add it, and nothing would read it) in one line with the
    keys it may have meant; an argument of a LazyCall's target is taken, and hydra's
    ``+key=value`` adds a key on purpose."""
    from omegaconf import OmegaConf

    from detectron2.config import LazyConfig

    from panet_d2.config import check_lazy_training_values
    from panet_d2.errors import ConfigError

    d2_apply = LazyConfig.apply_overrides

    def apply_overrides(cfg, overrides):
        for option in overrides:
            parts = option.split("=", 1)[0].split(".")
            for i in range(len(parts)) if not option.startswith(("+", "~")) else ():
                node = OmegaConf.select(cfg, ".".join(parts[:i]), throw_on_resolution_failure=False)
                if not OmegaConf.is_dict(node) or parts[i] in node:
                    continue
                if _lazy_call_takes(node, parts[i]):  # an argument the config leaves at its default
                    break
                close = difflib.get_close_matches(parts[i], [str(k) for k in node], n=3)
                close = " (did you mean: {}?)".format(", ".join(close)) if close else ""
                raise ConfigError(
                    "LazyConfig option {!r}: {} has no key {!r}{}; keys: {}. A new key does "
                    "nothing unless code reads it: add one on purpose with +{}.".format(
                        option,
                        ".".join(parts[:i]) or "the config",
                        parts[i],
                        close,
                        ", ".join(sorted(map(str, node))[:20]),
                        option,
                    )
                )
        cfg = d2_apply(cfg, overrides)
        check_lazy_training_values(cfg)
        return cfg

    return mock.patch.object(LazyConfig, "apply_overrides", staticmethod(apply_overrides))


def _ddp_of_cpu_models():
    """While the block runs, ``torch.nn.parallel.DistributedDataParallel`` takes a CPU model
    with the ``device_ids`` that Detectron2's plain_train_net and benchmark pass (DDP refuses
    them for a CPU model; its create_ddp_model: ``panet_d2.compat.ddp_on_cpu``)."""
    import torch.nn.parallel

    ddp = torch.nn.parallel.DistributedDataParallel

    # UPSTREAM-WORKAROUND d2-tools-ddp-device-ids: Detectron2 0.6's tools/plain_train_net.py and
    # benchmark.py build DistributedDataParallel(model, device_ids=[local rank]) on the CPU too.
    class DistributedDataParallel(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if all(p.device.type == "cpu" for p in module.parameters()):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    return _patched(torch.nn.parallel, "DistributedDataParallel", DistributedDataParallel)


_LOGGED = set()


def _log_once(note):
    if note not in _LOGGED:
        _LOGGED.add(note)
        logger.warning(note)


def _as_class(node, cls):
    object.__setattr__(node, "__class__", cls)  # yacs' __setattr__ takes config values only
    for value in node.values():
        if isinstance(value, dict):
            _as_class(value, cls)
    return node


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _demo_predictor_alias(script):
    """Detectron2's demo.py imports ``vision.fair.detectron2.demo.predictor`` (Meta's internal
    path): while the block runs, that name is the ``predictor`` module next to the script."""
    name = "vision.fair.detectron2.demo.predictor"
    if os.path.basename(script) != "demo.py" or importlib.util.find_spec("vision") is not None:
        yield
        return
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(script), "predictor.py")
    )
    predictor = importlib.util.module_from_spec(spec)
    parts = name.split(".")
    added = {}
    for i in range(1, len(parts)):
        package = types.ModuleType(".".join(parts[:i]))
        package.__path__ = []
        added[package.__name__] = package
    added[name] = predictor
    sys.modules.update(added)
    try:
        spec.loader.exec_module(predictor)
        yield
    finally:
        for key in added:
            sys.modules.pop(key, None)


@contextlib.contextmanager
def _demo_output_folder(script, args):
    """Detectron2's demo.py writes into ``--output`` when it is a folder: one that does not exist
    (a name without an extension) is created, and the folder of a file name too."""
    out = args[args.index("--output") + 1] if "--output" in args[:-1] else None
    if os.path.basename(script) == "demo.py" and out and not os.path.exists(out):
        folder = os.path.dirname(out) if os.path.splitext(out.rstrip("/"))[1] else out
        if folder and not os.path.isdir(folder):
            os.makedirs(folder)
            logger.info("Created the --output folder %s", folder)
    yield


def _check_output_dir_option(script, args):
    """Detectron2's tools create ``--output-dir`` (visualize_data) with ``os.makedirs`` after the
    dataset has loaded: a path under a regular file or in a folder without write access was a
    ``FileExistsError`` / ``PermissionError`` traceback; refused in one line before the run
    (only for a script that has the option: another one's parser refuses it, nothing created)."""
    from panet_d2.engine.checks import check_output_dir

    with open(script, encoding="utf-8", errors="replace") as f:
        if '"--output-dir"' not in f.read():
            return
    for i, arg in enumerate(args):
        if arg == "--output-dir" and i + 1 < len(args):
            check_output_dir(args[i + 1], "--output-dir")
        elif arg.startswith("--output-dir="):
            check_output_dir(arg.split("=", 1)[1], "--output-dir")


def _check_analyze_model_counts(script, args):
    """Detectron2 0.6's analyze_model averages the activation counts over ``--num-inputs`` minus
    one (a ZeroDivisionError after the count for 1) and names an undefined variable for 0: refused
    before the model is built."""
    if os.path.basename(script) != "analyze_model.py":
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tasks", nargs="+", default=[])
    parser.add_argument("-n", "--num-inputs", type=int, default=100)
    try:
        known, _ = parser.parse_known_args(args)
    except SystemExit:  # malformed: analyze_model's own parser says how
        return
    for task, least, why in (
        ("activation", 2, "divides its activation counts by the number of inputs minus one"),
        ("flop", 1, "counts FLOPs on the inputs"),
    ):
        if task in known.tasks and known.num_inputs < least:
            from panet_d2.errors import InputError

            raise InputError(
                "analyze_model --num-inputs {}: --tasks {} needs at least {} (Detectron2 0.6's "
                "analyze_model {}).".format(known.num_inputs, task, least, why)
            )


def _check_benchmark_task(script, args):
    """Detectron2 0.6's data benchmarks call ``numpy.percentile(interpolation=...)``, which NumPy 2
    no longer takes (a TypeError after the data loading): refused before they run."""
    import numpy as np

    if os.path.basename(script) != "benchmark.py" or int(np.__version__.split(".")[0]) < 2:
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--task")
    known, _ = parser.parse_known_args(args)
    if known.task in ("data", "data_advanced"):
        from panet_d2.errors import InputError

        raise InputError(
            f"benchmark --task {known.task}: Detectron2 0.6's data benchmark calls "
            f"numpy.percentile(interpolation=...), which NumPy {np.__version__} no longer takes "
            "(NumPy < 2 does); --task train and eval run."
        )


@contextlib.contextmanager
def _activation_count_traces_non_tensor_outputs():
    """
    Detectron2's ``activation_count_operators`` (``analyze_model --tasks activation``) traces
    the model with ``TracingAdapter(model, inputs)``, which refuses outputs that are not tensors
    (a panoptic model's ``segments_info``): "Model cannot be traced because some model outputs
    cannot flatten to tensors". While the block runs it leaves them out, as Detectron2's
    ``FlopCountAnalysis`` (``--tasks flop``) does; the count covers the same computation.
    """
    import functools

    import detectron2.utils.analysis as d2_analysis

    # UPSTREAM-WORKAROUND analyze-activation-non-tensor: Detectron2 0.6's
    # activation_count_operators traces without allow_non_tensor (its FLOP count passes True)
    adapter = functools.partial(d2_analysis.TracingAdapter, allow_non_tensor=True)
    with _patched(d2_analysis, "TracingAdapter", adapter):
        yield


@contextlib.contextmanager
def fvcore_op_handles(handles):
    """While the block runs, every fvcore ``FlopCountAnalysis`` (Detectron2's
    ``tools/analyze_model.py``) counts the ops of ``handles`` ({op name: handle})."""
    # UPSTREAM-WORKAROUND fvcore-op-handle-table: fvcore 0.1.5 has no public registry of op
    # handles, only its module table _DEFAULT_SUPPORTED_OPS
    table = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    saved = dict(table)
    table.update(handles)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


@contextlib.contextmanager
def _quiet_tracing_deprecation():
    """Detectron2's tracing (analyze_model's counts, deploy/export_model) scripts its
    ``@torch.jit.script_if_tracing`` helpers; torch >= 2.10 warns at each that
    ``torch.jit.script`` is deprecated. Detectron2 has no other way to trace its models: that one
    warning is not shown while the block runs (the filters are put back after)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        yield


def _output_dir(cfg):
    """OUTPUT_DIR of a yacs config, ``train.output_dir`` of a LazyConfig (None if unset)."""
    if "OUTPUT_DIR" in cfg:
        return cfg.OUTPUT_DIR
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, "train.output_dir", default=None)


def _tool_checkpointer():
    """:class:`PANetCheckpointer` as Detectron2's scripts construct ``DetectionCheckpointer``:
    files read as data, weights that are not finite or do not fit refused; a training run (given
    a trainer or an optimizer) warm-starts, and "" loads nothing (as Detectron2's)."""
    from panet_d2 import PANetCheckpointer

    class DetectionCheckpointer(PANetCheckpointer):
        def __init__(self, model, save_dir="", **kwargs):
            warm = "trainer" in kwargs or "optimizer" in kwargs
            super().__init__(model, save_dir, warm_start=warm, **kwargs)

        def load(self, path, *args, **kwargs):
            return super().load(path, *args, **kwargs) if path else {}

    return DetectionCheckpointer


def _check_weights(cfg, args):
    """The training scripts' weights (MODEL.WEIGHTS, ``train.init_checkpoint``), unless resumed
    from ``last_checkpoint``: one line if not a file (Detectron2 asserts after the model build)."""
    from omegaconf import OmegaConf

    from panet_d2.checkpoint import check_weights_file

    key = "MODEL.WEIGHTS" if "MODEL" in cfg else "train.init_checkpoint"
    path = cfg.MODEL.WEIGHTS if "MODEL" in cfg else OmegaConf.select(cfg, key, default="")
    last = os.path.join(_output_dir(cfg) or "", "last_checkpoint")
    if path and not (getattr(args, "resume", False) and os.path.isfile(last)):
        check_weights_file(path, key)


@contextlib.contextmanager
def panet_d2_environment(script):
    """
    While the block runs: Detectron2's ``get_cfg``, ``default_setup`` and ``launch`` as the
    module docstring says, the demo's predictor alias, PANet's FLOP handles in fvcore's table
    (:func:`fvcore_op_handles`), and ``panet_d2`` imported.
    """
    import detectron2.checkpoint
    import detectron2.config
    import detectron2.engine
    import detectron2.engine.defaults
    import detectron2.engine.launch
    import detectron2.utils.comm as comm
    from detectron2.utils.logger import setup_logger

    import panet_d2  # noqa: F401  registers models and datasets
    from panet_d2 import add_panet_config
    from panet_d2.analysis import FLOP_HANDLES
    from panet_d2.compat import ddp_on_cpu
    from panet_d2.config import lazyconfig_files_as_data

    d2_get_cfg = detectron2.config.get_cfg
    d2_default_setup = detectron2.engine.default_setup
    d2_launch = detectron2.engine.launch
    cfg_class = _panet_cfg_node_class()

    def get_cfg():
        cfg = d2_get_cfg()
        add_panet_config(cfg)
        return _as_class(cfg, cfg_class)

    def default_setup(cfg, args):
        trains = os.path.basename(script) in TRAINING_SCRIPTS and not getattr(args, "eval_only", 0)
        if trains and cfg.get("SOLVER", {}).get("SCALE_MOMENTUM"):
            from panet_d2.errors import ConfigError

            raise ConfigError(
                "SOLVER.SCALE_MOMENTUM=True: Detectron2's {} does not rescale SGD's momentum "
                "(this project's train_net.py does); train with train_net.py, or set "
                "SOLVER.SCALE_MOMENTUM False.".format(os.path.basename(script))
            )
        _check_weights(cfg, args)
        d2_default_setup(cfg, args)
        project = logging.getLogger("panet_d2")
        for handler in list(project.handlers):  # the console handler of main(): replaced
            project.removeHandler(handler)
        setup_logger(_output_dir(cfg), distributed_rank=comm.get_rank(), name="panet_d2")

    def launch(main_func, num_gpus_per_machine, num_machines=1, *args, **kwargs):
        if num_gpus_per_machine * num_machines > 1:
            # the child processes start from this file (see _become_tool_in_child)
            os.environ[CHILD_ENV_VAR] = script
            sys.modules["__main__"].__file__ = os.path.abspath(__file__)
        return d2_launch(main_func, num_gpus_per_machine, num_machines, *args, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(detectron2.config, "get_cfg", get_cfg))
        for module in (detectron2.engine, detectron2.engine.defaults):
            stack.enter_context(_patched(module, "default_setup", default_setup))
        stack.enter_context(_patched(detectron2.engine, "launch", launch))
        stack.enter_context(ddp_on_cpu())  # Detectron2's create_ddp_model (its DefaultTrainer)
        stack.enter_context(_ddp_of_cpu_models())  # the scripts that build DDP themselves
        stack.enter_context(_registered_datasets_only())
        stack.enter_context(_existing_lazy_keys_only())
        checkpointer = _tool_checkpointer()  # the same class in both modules
        for module in (detectron2.checkpoint, detectron2.engine.defaults):
            stack.enter_context(_patched(module, "DetectionCheckpointer", checkpointer))
        stack.enter_context(lazyconfig_files_as_data())  # LazyConfig .yaml files: data
        stack.enter_context(_demo_predictor_alias(script))
        stack.enter_context(fvcore_op_handles(FLOP_HANDLES))  # analyze_model's FLOP counts
        stack.enter_context(_activation_count_traces_non_tensor_outputs())
        stack.enter_context(_quiet_tracing_deprecation())
        yield


def run_tool(script, args, run_name="__main__"):
    """
    Runs Detectron2's ``script`` with command-line arguments ``args`` in this process, in
    :func:`panet_d2_environment`.

    Returns:
        dict: the globals of the script after it ran.
    """
    _check_analyze_model_counts(script, args)
    _check_benchmark_task(script, args)
    _check_output_dir_option(script, args)
    argv, path = sys.argv, list(sys.path)
    sys.argv = [script] + list(args)
    sys.path.insert(0, os.path.dirname(script))  # as `python3 script`: e.g. demo's predictor.py
    try:
        with panet_d2_environment(script), _demo_output_folder(script, args):
            return runpy.run_path(script, run_name=run_name)
    finally:
        sys.argv, sys.path[:] = argv, path


def _become_tool_in_child():
    """
    In a child process of Detectron2's ``launch`` (multiprocessing's spawn runs this file as
    ``__mp_main__``): runs the parent's script under the same name, in the same environment,
    so that the function the parent passed to ``launch`` (pickled as ``__main__.<name>``) is the
    script's. The script's ``if __name__ == "__main__"`` block does not run here.
    """
    global _CHILD_ENVIRONMENT
    script = os.environ[CHILD_ENV_VAR]
    sys.path.insert(0, os.path.dirname(script))
    # for the life of the child process (kept referenced: a collected generator would undo it)
    _CHILD_ENVIRONMENT = panet_d2_environment(script)
    _CHILD_ENVIRONMENT.__enter__()
    globals().update(runpy.run_path(script, run_name="__mp_main__"))


class MissingModuleError(RuntimeError):
    """A Detectron2 tool that needs a Python module which is not installed."""


def main(argv=None):
    from d2_tools import find_detectron2_tool, list_detectron2_tools_by_folder

    from panet_d2.engine.cli import one_line_errors

    parser = get_parser()
    args = parser.parse_args(argv)
    if args.list:
        for root, how, names in list_detectron2_tools_by_folder(args.d2_root):
            print("In {} ({}): {}".format(root, how, " ".join(names) or "no scripts"))
        return None
    if not args.tool:
        parser.error("TOOL is required (e.g. analyze_model); --list lists them")
    with one_line_errors():  # Detectron2ToolNameError, Detectron2ToolNotFoundError: exit code 2
        script = find_detectron2_tool(args.tool, args.d2_root)
    return run_found_tool(script, args.args)


def run_found_tool(script, args):
    """
    :func:`run_tool` for the command line (also tools/lazyconfig_train_net.py's): the project's
    input errors (a config file refused, ...) as one line, exit code 2; a module the script needs
    and that is not installed as one line, exit code 1.
    """
    from detectron2.utils.logger import setup_logger

    from panet_d2.engine.cli import one_line_errors

    setup_logger(name="panet_d2", abbrev_name="panet_d2")  # until the script sets up its own
    logger.info("Running {} {}".format(script, " ".join(args)))
    with one_line_errors(MissingModuleError):  # not an input error: exit code 1
        try:
            return run_tool(script, args)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if not top or importlib.util.find_spec(top) is not None:
                raise
            raise MissingModuleError(
                "{} needs the Python module {!r}, which is not installed (e.g. pip install "
                "{}).".format(script, e.name, top)
            ) from None


if __name__ == "__main__":
    main()  # pragma: no cover
elif __name__ == "__mp_main__" and os.environ.get(CHILD_ENV_VAR):
    _become_tool_in_child()  # pragma: no cover
