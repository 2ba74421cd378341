#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""
Export a PANet or panoptic PANet model for deployment: Detectron2's tools/deploy/export_model.py
for this project (same options, without caffe2), on ``tools/export_support.py`` (built on
``detectron2.export``). Checkpoints load with ``PANetCheckpointer`` (panet_d2's and Detectron2's,
the AFP warm start included).

    python3 tools/export_model.py \\
        --config-file configs/COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml \\
        --format onnx --export-method tracing --sample-image input.jpg --output ./output \\
        MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

or with a LazyConfig (``configs/new_baselines/*.py``, ``configs/quick_schedules/*.py``; options as
``key=value``; the weights are ``train.init_checkpoint``, the device ``train.device``, CPU where
CUDA is absent):

    python3 tools/export_model.py --config-file configs/quick_schedules/panet_R_18_synth_lazy.py \\
        --export-method scripting --output ./output train.init_checkpoint=model_final.pth

Writes ``model.ts`` (TorchScript, with its code and graph dumped by ``dump_torchscript_IR``),
``model.onnx`` (opset ``export_support.ONNX_OPSET_VERSION``) or, with ``--format openvino``,
``model.onnx`` and the OpenVINO IR ``model.xml`` / ``model.bin`` (``--precision fp32``, ``bf16``:
OpenVINO's inference precision hint, ``int8``: ``model.int8.onnx``, its convolutions and fc
layers quantised by ONNX Runtime on ``--calibration-count`` images of ``--calibration-dataset``,
its other ops float32, ``int8-bf16``: its convolutions only, its other ops bfloat16,
``int8-heads``: the mask and semantic heads only, its boxes float32's;
tools/openvino_backend.py, which also runs the IR without torch; an int8 IR in which OpenVINO
computes zeros where ONNX Runtime does not is refused, not written). What the exported model
computes: see ``tools/export_support.py``. ``--run-eval`` evaluates the exported model on
cfg.DATASETS.TEST[0] with the project's evaluator of that dataset (of a LazyConfig:
``dataloader.evaluator`` on ``dataloader.test``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # tools/export_support.py, ...
import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import argparse
import contextlib
import time
import warnings

import torch
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import CfgNode, instantiate
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.export import dump_torchscript_IR
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer
from panet_d2.config import instantiate_model, load_config_file
from panet_d2.data.image_io import check_model_input_side, read_image
from panet_d2.engine import adapt_config_to_machine, one_line_errors
from panet_d2.engine.checks import check_config, check_dataset, check_output_dir, loading_dataset
from panet_d2.errors import ConfigError, DatasetError, NonFiniteOutputError

import export_support as export  # noqa: E402  isort: skip  (tools/)
from openvino_backend import (  # noqa: E402  isort: skip  (tools/)
    PRECISIONS,
    MiscompiledError,
    int8_heads_refusal,
)

logger = setup_logger(name="panet_d2.export_model")


@contextlib.contextmanager
def tracer_warnings_counted():
    """
    Tracing warns (``torch.jit.TracerWarning``) wherever a Python value is read from a tensor
    (shapes, box counts): expected, and checked by the exported model's tests. Inside the block
    they are caught and logged once, as a count; other warnings are shown as usual.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        # torch 2.14 warns that torch.jit.script is deprecated; Detectron2's export calls it
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        yield
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if tracer:
        logger.info(
            "Tracing: {} TracerWarnings not shown (Python values that the trace records as "
            "constants: expected for this model)".format(len(tracer))
        )


CALIBRATION_COUNT = 16  # --calibration-count by default


def get_parser():
    parser = argparse.ArgumentParser(description="Export a panet_d2 model for deployment.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument(
        "--format",
        choices=["torchscript", "onnx", "openvino"],
        default="torchscript",
        help="output format (openvino: the ONNX graph as OpenVINO IR, run on the CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="openvino: float32, bfloat16 (inference precision hint), int8 (post-training "
        "quantisation of the convolutions and fc layers, calibrated on --calibration-dataset; the "
        "other ops float32), int8-bf16 (of the convolutions only, the other ops bfloat16) or "
        "int8-heads (of the mask and semantic heads only: the boxes are float32's)",
    )
    parser.add_argument(
        "--calibration-dataset",
        default=None,
        metavar="NAME",
        help="int8, int8-bf16, int8-heads: the registered dataset whose images calibrate "
        "(default: the first training dataset of the config)",
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=None,
        metavar="N",
        help="int8, int8-bf16, int8-heads: the number of calibration images (default {})".format(
            CALIBRATION_COUNT
        ),
    )
    parser.add_argument(
        "--export-method",
        choices=["tracing", "scripting"],
        default="tracing",
        help="how to export (onnx: tracing only)",
    )
    parser.add_argument(
        "--sample-image",
        default=None,
        help="image to trace with (default: the first image of the config's test dataset)",
    )
    parser.add_argument("--run-eval", action="store_true", help="evaluate the exported model")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config changes: KEY VALUE pairs (yacs), key=value (LazyConfig)",
    )
    return parser


def setup_cfg(args):
    """The yacs config (frozen; MODEL.DEVICE "cuda" is the CPU where CUDA is absent, as in
    train_net.py), or the LazyConfig of a ``.py`` file; an error in either is a ConfigError
    naming the file (and line, for a LazyConfig's Python)."""
    cfg = load_config_file(args.config_file, args.opts)
    notes = adapt_config_to_machine(cfg)
    for note in notes:
        logger.warning(note)
    if not isinstance(cfg, CfgNode):
        cfg.dataloader.test.num_workers = 0
        return cfg
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def get_sample_input(cfg, args):
    """One test input as the test loader gives it: {"image" (resized), "height", "width"}."""
    lazy = not isinstance(cfg, CfgNode)
    if args.sample_image is None:
        if lazy:
            return next(iter(instantiate(cfg.dataloader.test)))[0]
        return next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]
    image_format = cfg.model.input_format if lazy else cfg.INPUT.FORMAT
    original = read_image(args.sample_image, format=image_format, what="--sample-image")
    if lazy:
        augmentations = list(instantiate(cfg.dataloader.test.mapper.augmentations))
    else:
        augmentations = [
            T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        ]
    what = f"--sample-image {args.sample_image!r}"
    if len(augmentations) == 1 and isinstance(augmentations[0], T.ResizeShortestEdge):
        transform = augmentations[0].get_transform(original)  # the size, before it is made
        new = getattr(transform, "new_h", None), getattr(transform, "new_w", None)
        check_model_input_side(original.shape if None in new else new, what)
    image = T.AugmentationList(augmentations)(T.AugInput(original)).apply_image(original)
    check_model_input_side(image.shape, what)
    image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    return {"image": image, "height": original.shape[0], "width": original.shape[1]}


OUTPUT_FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "openvino": "model.xml"}


def check_args(args):
    """Refuse, in one line and before anything loads, the combinations the tool cannot export."""
    if args.export_method == "scripting" and args.format != "torchscript":
        raise ConfigError("--export-method scripting exports to --format torchscript only")
    if args.precision != "fp32" and args.format != "openvino":
        raise ConfigError(
            "--precision {} needs --format openvino (TorchScript and ONNX Runtime exports are "
            "float32)".format(args.precision)
        )
    if not args.precision.startswith("int8") and args.calibration_dataset is not None:
        raise ConfigError(
            "--calibration-dataset calibrates --precision int8, int8-bf16 or int8-heads only"
        )
    if not args.precision.startswith("int8") and args.calibration_count is not None:
        raise ConfigError(
            "--calibration-count {} calibrates --precision int8, int8-bf16 or int8-heads "
            "only".format(args.calibration_count)
        )
    if args.calibration_count is not None and args.calibration_count < 1:
        raise ConfigError(
            "--calibration-count {}: must be at least 1".format(args.calibration_count)
        )
    check_output_dir(args.output, "--output")


def lazy_dataset_names(cfg, split):
    """The names (list) of a LazyConfig's ``dataloader.<split>.dataset.names`` (a str or list)."""
    names = OmegaConf.select(cfg, f"dataloader.{split}.dataset.names")
    return [names] if isinstance(names, str) else list(names or [])


def calibration_dataset(cfg, args):
    """``--calibration-dataset``, by default the config's first training dataset."""
    if args.calibration_dataset is not None:
        return args.calibration_dataset
    names = cfg.DATASETS.TRAIN if isinstance(cfg, CfgNode) else lazy_dataset_names(cfg, "train")
    if not names:
        raise ConfigError(
            "--precision {} calibrates on the config's first training dataset, and there is "
            "none: give --calibration-dataset NAME".format(args.precision)
        )
    return names[0]


def calibration_inputs(cfg, args, model):
    """The exported model's inputs (NumPy arrays) of the first ``--calibration-count`` images of
    :func:`calibration_dataset`, resized as the test loader resizes."""
    name = calibration_dataset(cfg, args)
    count = CALIBRATION_COUNT if args.calibration_count is None else args.calibration_count
    out = []
    with loading_dataset([name], "--calibration-dataset"):
        if isinstance(cfg, CfgNode):
            loader = build_detection_test_loader(cfg, name)
        else:
            loader_cfg = cfg.dataloader.test.copy()
            loader_cfg.dataset.names = name
            loader = instantiate(loader_cfg)
        for batch in loader:
            d = batch[0]
            inputs = export.sample_inputs(model, d["image"], d.get("height"), d.get("width"))
            out.append(tuple(x.numpy() for x in inputs))
            if len(out) == count:
                break
    if len(out) < count:  # said, not silently fewer
        logger.warning(
            "--calibration-count {}: {!r} has {} images; int8 calibrates on all {}.".format(
                count, name, len(out), len(out)
            )
        )
    logger.info("int8: {} calibration images of {}".format(len(out), name))
    return out


def write_openvino(cfg, args, model, sample, onnx_path):
    """Writes model.onnx (float32; with int8 also model.int8.onnx, quantised) and the OpenVINO IR
    model.xml / model.bin converted from it; returns the schema of the outputs."""
    import openvino_backend

    schema = export.export_onnx(model, sample, onnx_path)
    if args.precision != "fp32":
        logger.warning(
            f"--precision {args.precision} changes the model's outputs; how much on this "
            "checkpoint is measured by benchmarks/accuracy_gate.py (docs/deployment.md): run it "
            "before deploying."
        )
    if args.precision.startswith("int8"):
        quantised = os.path.join(args.output, "model.int8.onnx")
        inputs = calibration_inputs(cfg, args, model)
        names = ["image", "height", "width"][: len(sample)]
        onnx_path = openvino_backend.quantize_onnx(
            onnx_path, quantised, inputs, names, args.precision
        )
    xml_path = openvino_backend.convert_onnx(onnx_path, os.path.join(args.output, "model.xml"))
    if args.precision.startswith("int8"):
        check_int8_ir(onnx_path, xml_path, inputs[0], names, args.precision)
    logger.info("OpenVINO IR of {} ({})".format(onnx_path, args.precision))
    return schema


def check_int8_ir(onnx_path, xml_path, inputs, names, precision):
    """Refuse (:class:`MiscompiledError`, the IR removed) an int8 IR in which OpenVINO computes
    zeros where ONNX Runtime's run of the same QDQ graph on ``inputs`` does not."""
    import openvino
    import openvino_backend

    start = time.perf_counter()
    zeros = openvino_backend.zeroed_activations(onnx_path, xml_path, inputs, names, precision)
    if not zeros:
        logger.info(
            "int8 IR checked against ONNX Runtime on the first calibration image: no activation "
            "computed as zeros ({:.1f} s)".format(time.perf_counter() - start)
        )
        return
    for path in (xml_path, xml_path[: -len(".xml")] + ".bin"):
        os.remove(path)
    others = "fp32 or bf16"
    float_in_heads = openvino_backend.INT8_QUANTISED["int8-heads"][1]  # not quantised there
    if precision != "int8-heads" and all(z.startswith(float_in_heads) for z in zeros):
        others = "int8-heads (its box path is float32), " + others
    if precision == "int8" and all(z.startswith("/roi_heads/box_head/") for z in zeros):
        others = "int8-bf16 (its box head is not quantised), " + others
    raise MiscompiledError(
        "OpenVINO {} computes {} int8 activation(s) of this model as zeros where ONNX Runtime, "
        "running the same quantised graph {} on the first calibration image, does not ({}); "
        "model.xml would give wrong outputs and is not written: export --precision {} "
        '(docs/deployment.md, "Ops left float read float tensors").'.format(
            openvino.__version__.split("-")[0], len(zeros), onnx_path, ", ".join(zeros[:3]), others
        )
    )


def export_traced(cfg, args, model, path, sample):
    """Tracing-based exports (TorchScript, ONNX, OpenVINO) on the flat inputs ``sample``: writes
    the model; returns ``run(image, height, width)`` giving its outputs rebuilt by their schema."""
    with tracer_warnings_counted():
        if args.format == "torchscript":
            exported, schema = export.trace_model(model, sample)
            run_flat = exported
            with PathManager.open(path, "wb") as f:
                torch.jit.save(exported, f)
            dump_torchscript_IR(exported, args.output)
        elif args.format == "onnx":
            schema = export.export_onnx(model, sample, path)
            run_flat = None  # an ONNX Runtime session, made on first use
        else:
            schema = write_openvino(cfg, args, model, sample, path[: -len(".xml")] + ".onnx")
            run_flat = None  # compiled on first use
    logger.info("Outputs schema: {}".format(schema))

    def run(image, height, width):
        nonlocal run_flat
        if run_flat is None and args.format == "onnx":
            run_flat = export.OnnxRuntimeModel(path, None)
        elif run_flat is None:
            from openvino_backend import OpenVinoModel

            compiled = OpenVinoModel(path, args.precision, torch.get_num_threads())
            run_flat = lambda *xs: [torch.from_numpy(o) for o in compiled(*xs)]  # noqa: E731
        return schema(run_flat(*export.sample_inputs(model, image, height, width)))

    return run


@contextlib.contextmanager
def scripted_errors():
    """A scripted model's :class:`NonFiniteOutputError` (a ``torch.jit.Error`` naming it) as one."""
    try:
        yield
    except torch.jit.Error as e:
        name = NonFiniteOutputError.__module__ + "." + NonFiniteOutputError.__name__ + ": "
        line = next((x for x in str(e).splitlines() if x.startswith(name)), None)
        if line is None:
            raise
        raise NonFiniteOutputError(line[len(name) :]) from None


def export_model(cfg, args, model):
    """Writes the exported model; returns a function ``inputs -> outputs`` running it as the eager
    model runs (for --run-eval)."""
    sample = get_sample_input(cfg, args)
    sample = export.sample_inputs(model, sample["image"], sample["height"], sample["width"])
    if args.format == "torchscript":  # (export_onnx runs the model eagerly before it writes)
        with torch.no_grad():  # weights giving NaN or inf on the sample: refused before any export
            export.inference_function(model)(model, *sample)
    PathManager.mkdirs(args.output)
    path = os.path.join(args.output, OUTPUT_FILES[args.format])
    if args.export_method == "scripting":
        check_args(args)
        exported = export.script_model(model)
        with PathManager.open(path, "wb") as f:
            torch.jit.save(exported, f)
        dump_torchscript_IR(exported, args.output)

        def run(image, height, width):
            inputs = {"image": image}
            if export.is_panoptic(model):
                inputs.update(height=torch.tensor(height), width=torch.tensor(width))
            return exported([inputs])[0]

    else:
        run = export_traced(cfg, args, model, path, sample)
    logger.info("Wrote {}".format(path))

    def inference(batched_inputs):
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            with torch.no_grad(), scripted_errors():
                outputs = run(image, height, width)
            results.append(export.eager_outputs(outputs, image.shape[-2:], height, width))
        return results

    return inference


def evaluate(cfg, inference, output_dir):
    """Metrics of ``inference`` (what :func:`export_model` returns) on cfg.DATASETS.TEST[0], by the
    project's evaluator of that dataset; of a LazyConfig, by ``dataloader.evaluator`` (one or a
    list) on ``dataloader.test``."""
    from panet_d2.evaluation import build_evaluator

    if not isinstance(cfg, CfgNode):
        logger.info(
            "Evaluating the exported model on {} ...".format(cfg.dataloader.test.dataset.names)
        )
        evaluator = instantiate(cfg.dataloader.evaluator)
        if not hasattr(evaluator, "process"):  # a list of evaluators
            evaluator = DatasetEvaluators(list(evaluator))
        metrics = inference_on_dataset(inference, instantiate(cfg.dataloader.test), evaluator)
        print_csv_format(metrics)
        return metrics
    dataset, others = cfg.DATASETS.TEST[0], list(cfg.DATASETS.TEST[1:])
    if others:  # said, not silently fewer
        logger.warning(f"--run-eval evaluates DATASETS.TEST[0] {dataset!r} only, not {others}.")
    logger.info("Evaluating the exported model on {} ...".format(dataset))
    evaluator = build_evaluator(cfg, dataset, os.path.join(output_dir, "inference"))
    metrics = inference_on_dataset(inference, build_detection_test_loader(cfg, dataset), evaluator)
    print_csv_format(metrics)
    return metrics


def check_test_dataset(cfg, args):
    """Refuse, in one line, a test dataset that --run-eval or the sample input needs and that is
    not there (yacs: DATASETS.TEST[0]; LazyConfig: dataloader.test.dataset.names)."""
    lazy = not isinstance(cfg, CfgNode)
    key = "dataloader.test.dataset.names" if lazy else "DATASETS.TEST"
    what = "--run-eval evaluates on {}"
    if not args.run_eval:
        what = "the sample input is the first image of {} (or --sample-image)"
    what = what.format("dataloader.test" if lazy else "DATASETS.TEST[0]")
    if not lazy and not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: " + what)
    if lazy and args.run_eval and len(lazy_dataset_names(cfg, "test")) > 1:  # (one evaluator)
        raise ConfigError(
            f"{key}={lazy_dataset_names(cfg, 'test')}: --run-eval evaluates one dataset (the "
            "LazyConfig's dataloader.evaluator is built for one): give one name."
        )
    for name in lazy_dataset_names(cfg, "test") if lazy else cfg.DATASETS.TEST[:1]:
        try:
            check_dataset(name, key)
        except DatasetError as e:
            raise DatasetError(f"{e} {what[:1].upper()}{what[1:]}.") from None


def main(argv=None):
    args = get_parser().parse_args(argv)
    # the loggers of train_net.py --eval-only: the evaluators' tables, print_csv_format's lines
    for name in ("fvcore", "detectron2", "panet_d2"):
        setup_logger(name=name)
    logger.info("Command line arguments: " + str(args))
    check_args(args)  # before any loading
    cfg = setup_cfg(args)
    if isinstance(cfg, CfgNode):
        check_config(cfg, train=False)  # as train_net.py --eval-only
        if cfg.TEST.AUG.ENABLED:  # GeneralizedRCNNWithTTA runs the model several times, in Python
            logger.warning(
                "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's "
                "GeneralizedRCNNWithTTA around the model) is not exported: the export, and "
                "--run-eval's numbers, are the plain model's (train_net.py --eval-only evaluates "
                "TTA)."
            )
    if args.precision.startswith("int8"):  # before the model and the export
        check_dataset(calibration_dataset(cfg, args), "--calibration-dataset")
    if args.run_eval or args.sample_image is None:
        check_test_dataset(cfg, args)

    if isinstance(cfg, CfgNode):
        model, weights = build_model(cfg), cfg.MODEL.WEIGHTS
    else:
        model, weights = instantiate_model(cfg).to(cfg.train.device), cfg.train.init_checkpoint
    refusal = int8_heads_refusal(model) if args.precision == "int8-heads" else None
    if refusal:
        raise ConfigError(f"--precision {refusal}. Export --precision fp32 or int8.")
    PANetCheckpointer(model).load(weights)  # required; every tensor of the model from it
    model.eval()
    inference = export_model(cfg, args, model)
    if args.run_eval:
        return evaluate(cfg, inference, args.output)
    logger.info("Success.")
    return None


def cli(argv=None):
    """:func:`main`, an input error (config, checkpoint, image) as one "ERROR:" line, exit 1."""
    with one_line_errors(MiscompiledError):
        return main(argv)


if __name__ == "__main__":
    cli()  # pragma: no cover
