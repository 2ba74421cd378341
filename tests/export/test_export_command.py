# -*- coding: utf-8 -*-
"""
tools/export_model.py (Detectron2's tools/deploy/export_model.py options) on quick-schedule
checkpoints written by PANetCheckpointer: the exported files give the eager model's outputs, and
--run-eval the eager model's metrics; the same with a LazyConfig file.
"""

import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from panet_d2 import PANetCheckpointer
from panet_d2.data import register_synthetic_dataset
from panet_d2.errors import NonFiniteOutputError
from panet_d2.evaluation import build_evaluator

from ..common import ROOT, error_exit, load_script, logged_messages, panet_cfg, random_image
from .common import assert_equal_fields, export, instances_fields

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE = "quick_schedules/panet_R_18_synth_instance.yaml"
PANOPTIC = "quick_schedules/panoptic_panet_R_18_synth.yaml"
LAZY = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_lazy.py")
SAMPLE_IMAGE = os.path.join(ROOT, "assets", "demo_images", "img1.jpg")
DATASET = "test_export_synth_val"


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/export_model.py", "export_model")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    register_synthetic_dataset(
        "test_export_synth", root=root, splits={"val": {"num_images": 2, "seed": 3}}
    )
    return root


def _checkpoint(config, path, opts=()):
    """A checkpoint as training writes it (PANetCheckpointer) of a freshly built model."""
    torch.manual_seed(0)
    PANetCheckpointer(
        build_model(panet_cfg(config, small=False, opts=opts)), save_dir=str(path)
    ).save("ckpt")
    return str(path / "ckpt.pth")


def _eager(config, weights, opts=()):
    cfg = panet_cfg(config, small=False, opts=["MODEL.WEIGHTS", weights] + list(opts))
    torch.manual_seed(123)  # other random weights than the checkpoint's: all must be loaded
    model = build_model(cfg).eval()
    PANetCheckpointer(model).load(weights)
    return cfg, model


def _assert_same_metrics(metrics, expected, abs):
    assert list(metrics) == list(expected)
    for task in metrics:
        assert list(metrics[task]) == list(expected[task])
        for key, value in metrics[task].items():
            assert value == pytest.approx(expected[task][key], abs=abs, nan_ok=True), key


def test_tracing_to_torchscript_of_a_detectron2_layout_checkpoint(tool, tmp_path):
    # a checkpoint with single-level box fc1 / mask conv1 (AFP off, Detectron2's layout): with
    # AFP on, the command refuses it (AFP would only warm-start from it: not the model trained),
    # naming the config key that fits; exported with that key
    weights = _checkpoint(INSTANCE, tmp_path, ["MODEL.AFP.ENABLED", False])
    out = str(tmp_path / "out")
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--output", out]
    line = error_exit(tool.cli, argv + ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    assert line.startswith("ERROR: Checkpoint {!r} does not fit".format(weights))
    assert "set MODEL.AFP.ENABLED False" in line
    assert not os.path.exists(os.path.join(out, "model.ts"))
    tool.main(
        [
            "--config-file",
            os.path.join(ROOT, "configs", INSTANCE),
            "--format",
            "torchscript",
            "--export-method",
            "tracing",
            "--sample-image",
            SAMPLE_IMAGE,
            "--output",
            out,
            "MODEL.WEIGHTS",
            weights,
            "MODEL.DEVICE",
            "cpu",
            "MODEL.AFP.ENABLED",
            "False",
        ]
    )
    assert {"model.ts", "model_ts_code.txt"} <= set(os.listdir(out))
    _, model = _eager(INSTANCE, weights, ["MODEL.AFP.ENABLED", False])
    traced = torch.jit.load(os.path.join(out, "model.ts"))
    img = torch.rand(3, 192, 256) * 255
    with torch.no_grad():
        expected = instances_fields(model.inference([{"image": img}], do_postprocess=False)[0])
        boxes, classes, masks, scores, size = traced(img)  # the fields by name, image_size
    assert size.tolist() == [192, 256]
    assert_equal_fields(
        expected,
        {"pred_boxes": boxes, "pred_classes": classes, "pred_masks": masks, "scores": scores},
    )


def test_onnx_export_and_its_evaluation(tool, tmp_path, datasets):
    pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
    weights = _checkpoint(INSTANCE, tmp_path)
    opts = ["DATASETS.TEST", "('{}',)".format(DATASET), "MODEL.DEVICE", "cpu"]
    cfg, model = _eager(INSTANCE, weights, opts)
    out = str(tmp_path / "out")
    # what main() does after loading the model, the test loader's first image traced
    args = tool.get_parser().parse_args(
        ["--config-file", "unused", "--format", "onnx", "--run-eval", "--output", out]
    )
    deployed = tool.export_model(cfg, args, model)
    assert os.path.isfile(os.path.join(out, "model.onnx"))
    cfg.defrost()
    cfg.DATASETS.TEST = (DATASET, "panet_synth_val")  # the second one not evaluated: said
    with logged_messages("panet_d2.export_model") as logged:
        metrics = tool.evaluate(cfg, deployed, out)
    message = "--run-eval evaluates DATASETS.TEST[0] {!r} only, not ['panet_synth_val'].".format(
        DATASET
    )
    assert message in logged
    expected = inference_on_dataset(
        model, build_detection_test_loader(cfg, DATASET), build_evaluator(cfg, DATASET, out)
    )
    assert set(metrics) == {"bbox", "segm"}
    _assert_same_metrics(metrics, expected, abs=1e-3)  # ONNX Runtime: test_onnx.py
    # what was evaluated: ONNX Runtime's outputs, resized as the eager model resizes them
    for inputs in build_detection_test_loader(cfg, DATASET):
        got = deployed(inputs)[0]["instances"]
        with torch.no_grad():
            want = model(inputs)[0]["instances"]
        assert got.image_size == want.image_size == (inputs[0]["height"], inputs[0]["width"])
        got, want = instances_fields(got), instances_fields(want)
        masks_got, masks_want = got.pop("pred_masks"), want.pop("pred_masks")
        assert_equal_fields(want, got, atol={"pred_boxes": 1e-3, "scores": 1e-5})
        assert (masks_got != masks_want).float().mean() < 1e-3  # pasted at 0.5 probability


def test_scripting_of_the_panoptic_model_with_run_eval(tool, tmp_path, datasets):
    weights = _checkpoint(PANOPTIC, tmp_path)
    opts = ["DATASETS.TEST", "('{}_panoptic',)".format(DATASET), "MODEL.DEVICE", "cpu"]
    out = str(tmp_path / "out")
    metrics = tool.main(
        [
            "--config-file",
            os.path.join(ROOT, "configs", PANOPTIC),
            "--format",
            "torchscript",
            "--export-method",
            "scripting",
            "--run-eval",
            "--output",
            out,
            "MODEL.WEIGHTS",
            weights,
        ]
        + opts
    )
    cfg, model = _eager(PANOPTIC, weights, opts)
    dataset = cfg.DATASETS.TEST[0]
    expected = inference_on_dataset(
        model, build_detection_test_loader(cfg, dataset), build_evaluator(cfg, dataset, out)
    )
    assert "panoptic_seg" in metrics
    _assert_same_metrics(metrics, expected, abs=0)  # the same outputs: the same metrics
    scripted = torch.jit.load(os.path.join(out, "model.ts"))
    img = torch.rand(3, 160, 192) * 255
    with torch.no_grad():
        got = scripted([{"image": img}])[0]
        eager = model([{"image": img}])[0]
    assert torch.equal(got["panoptic_seg"], eager["panoptic_seg"][0])
    assert (
        export.eager_outputs(got, None, None, None)["panoptic_seg"][1] == eager["panoptic_seg"][1]
    )
    # the scripted model keeps the check of its outputs (an input of NaN here), as torch.jit.Error;
    # the tool's evaluation turns it back into the one-line error
    nan_image = torch.full((3, 64, 64), float("nan"))
    with pytest.raises(NonFiniteOutputError, match="^The backbone's features p2 hold NaN or inf"):
        with torch.no_grad(), tool.scripted_errors():
            scripted([{"image": nan_image}])


def test_bad_option(tool, tmp_path):
    with pytest.raises(ValueError, match="scripting exports to --format torchscript only"):
        tool.main(
            [
                "--config-file",
                os.path.join(ROOT, "configs", INSTANCE),
                "--format",
                "onnx",
                "--export-method",
                "scripting",
                "--output",
                str(tmp_path),
                "MODEL.DEVICE",
                "cpu",
            ]
        )


def test_config_values_checked_as_evaluation_checks_them(tool, tmp_path):
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--format", "onnx"]
    argv += ["--output", str(tmp_path), "MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "0"]
    with pytest.raises(ValueError, match=r"^TEST.DETECTIONS_PER_IMAGE=0: must be an integer >= 1"):
        tool.main(argv)


def test_test_time_augmentation_not_exported_is_said(tool, tmp_path):
    """TEST.AUG.ENABLED (the _TTA configs): the export is the plain model, and said (before: exit
    0, --run-eval printing the plain model's numbers under the TTA config, nothing said)."""
    weights = _checkpoint(INSTANCE, tmp_path)
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--format", "onnx"]
    argv += ["--output", str(tmp_path / "out"), "--sample-image", SAMPLE_IMAGE, "MODEL.DEVICE"]
    argv += ["cpu", "MODEL.WEIGHTS", weights, "TEST.AUG.ENABLED", "True"]
    with logged_messages("panet_d2.export_model") as records:
        tool.main(argv)
    assert any(r.startswith("TEST.AUG.ENABLED=True: test-time augmentation") for r in records)
    assert os.path.isfile(tmp_path / "out" / "model.onnx")


def test_sample_image_larger_than_the_model_takes_refused(tool, tmp_path):
    """A --sample-image of a side over 8192 px as the model would get it (not resized, or resized
    up by a LazyConfig): refused as the demo and evaluation refuse it, the LazyConfig's before
    the resized image is made (before: a 5 GB allocation traceback, a MemoryError at 7 GB)."""
    from PIL import Image

    from panet_d2.errors import ImageLoadError

    wide = str(tmp_path / "wide.png")
    Image.new("RGB", (8200, 100)).save(wide)
    weights = _checkpoint(INSTANCE, tmp_path)
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--output", str(tmp_path)]
    argv += ["--sample-image", wide, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights]
    with pytest.raises(ImageLoadError, match=r"^The --sample-image '.*wide.png' is 8200x100 \("):
        tool.main(argv + ["INPUT.MIN_SIZE_TEST", "0"])
    cfg = LazyConfig.load(LAZY)
    PANetCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("lazy")
    opts = ["train.init_checkpoint=" + str(tmp_path / "lazy.pth"), "train.device=cpu"]
    opts += ["dataloader.test.mapper.augmentations.0.short_edge_length=30000"]
    opts += ["dataloader.test.mapper.augmentations.0.max_size=50000"]
    argv = ["--config-file", LAZY, "--output", str(tmp_path / "lazy"), "--sample-image", wide]
    with pytest.raises(ImageLoadError, match=r"^The --sample-image .* is 50000x610 \("):
        tool.main(argv + opts)


def test_lazyconfig_run_eval_of_two_test_datasets_refused(tool, tmp_path):
    """Its dataloader.evaluator is built for one name (Detectron2's COCOEvaluator then raised
    "output_dir must be provided")."""
    names = f"dataloader.test.dataset.names=[{DATASET},{DATASET}]"
    argv = ["--config-file", LAZY, "--output", str(tmp_path), "--run-eval", names]
    with pytest.raises(ValueError, match=r"^dataloader.test.dataset.names=\[.*\]: --run-eval eval"):
        tool.main(argv + ["train.device=cpu"])


def test_a_flag_after_the_lazyconfig_overrides_is_named(tool, tmp_path):
    """Hydra's LexerNoViableAltException before; the yacs configs' line now for both."""
    argv = ["--config-file", LAZY, "--output", str(tmp_path), "train.device=cpu", "--format", "x"]
    with pytest.raises(ValueError, match=r"'--format' is an option of the command: give it bef"):
        tool.main(argv)


def test_lazyconfig_tracing_and_scripting(tool, tmp_path):
    # the quick LazyConfig (SyncBN norms, per-level norms of a callable spec, ListConfig
    # attributes): a checkpoint of a freshly instantiated model, exported both ways with the
    # LazyConfig's test resize of the sample image, each compared with eager on another size
    cfg = LazyConfig.load(LAZY)
    torch.manual_seed(0)
    PANetCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("ckpt")
    weights = str(tmp_path / "ckpt.pth")
    torch.manual_seed(123)  # other random weights than the checkpoint's: all must be loaded
    model = instantiate(cfg.model).eval()
    PANetCheckpointer(model).load(weights)
    img = random_image(160, 224, seed=2)
    with torch.no_grad():
        expected = instances_fields(model.inference([{"image": img}], do_postprocess=False)[0])
    for method in ("tracing", "scripting"):
        out = str(tmp_path / method)
        opts = ["train.init_checkpoint=" + weights, "train.device=cpu"]
        args = ["--config-file", LAZY, "--export-method", method, "--output", out]
        tool.main(args + ["--sample-image", SAMPLE_IMAGE] + opts)
        exported = torch.jit.load(os.path.join(out, "model.ts"))
        with torch.no_grad():
            if method == "tracing":
                boxes, classes, masks, scores, size = exported(img)
                assert size.tolist() == [160, 224]
                got = {"pred_boxes": boxes, "pred_classes": classes, "pred_masks": masks}
                got["scores"] = scores
            else:
                got = exported([{"image": img}])[0]
        assert_equal_fields(expected, got)


def test_lazyconfig_int8_calibrates_on_the_named_dataset(tool, tmp_path, datasets):
    # --precision int8 with a LazyConfig: the calibration images come from the named dataset (2
    # images, fewer than asked for) through the LazyConfig's test loader; the graph is quantised
    pytest.importorskip("openvino", reason='pip install -e ".[export]"')
    onnx = pytest.importorskip("onnx", reason='pip install -e ".[export]"')
    cfg = LazyConfig.load(LAZY)
    torch.manual_seed(0)
    PANetCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("ckpt")
    out = str(tmp_path / "int8")
    args = ["--config-file", LAZY, "--format", "openvino", "--precision", "int8", "--output", out]
    args += ["--calibration-dataset", DATASET, "--calibration-count", "5"]
    opts = ["train.init_checkpoint=" + str(tmp_path / "ckpt.pth"), "train.device=cpu"]
    with logged_messages("panet_d2.export_model") as records:
        tool.main(args + ["--sample-image", SAMPLE_IMAGE] + opts)
    assert "int8: 2 calibration images of {}".format(DATASET) in records
    fewer = "--calibration-count 5: {!r} has 2 images; int8 calibrates on all 2.".format(DATASET)
    assert fewer in records  # said, not silently fewer
    graph = onnx.load(os.path.join(out, "model.int8.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10
    assert os.path.isfile(os.path.join(out, "model.xml"))


def test_output_that_is_a_file_is_refused_before_loading(tool, tmp_path):
    mine = tmp_path / "model.onnx"  # a file of the user's: kept as it is
    mine.write_text("mine")
    argv = ["--config-file", str(tmp_path / "missing.yaml"), "--format", "onnx"]
    line = error_exit(tool.cli, argv + ["--output", str(mine)])
    assert line == "ERROR: --output={!r} is a file: give a folder (created if missing).".format(
        str(mine)
    )
    assert mine.read_text() == "mine"


def test_empty_test_datasets_refused_before_loading(tool, tmp_path):
    # the sample input and --run-eval read DATASETS.TEST[0]; the weights (missing) load after
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--format", "onnx"]
    argv += ["--output", str(tmp_path / "out")]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    opts += ["DATASETS.TEST", "()"]
    assert error_exit(tool.cli, argv + ["--run-eval"] + opts) == (
        "ERROR: DATASETS.TEST is empty: --run-eval evaluates on DATASETS.TEST[0]"
    )
    assert error_exit(tool.cli, argv + opts) == (
        "ERROR: DATASETS.TEST is empty: the sample input is the first image of DATASETS.TEST[0] "
        "(or --sample-image)"
    )
    # a LazyConfig's test dataset, also for scripting (which runs the sample before exporting)
    lazy = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_lazy.py")
    argv = ["--config-file", lazy, "--export-method", "scripting", "--output", str(tmp_path)]
    line = error_exit(tool.cli, argv + ["dataloader.test.dataset.names=nope"])
    assert line.startswith("ERROR: Dataset 'nope' in dataloader.test.dataset.names is not regist")
    assert line.endswith(
        " The sample input is the first image of dataloader.test (or --sample-image)."
    )
