# -*- coding: utf-8 -*-
"""
Tests of train_net.py (run in-process on the smoke config, CPU): training with evaluation and
checkpoints, exact --resume, --eval-only reproducing the training metrics, test-time
augmentation, and the clear errors for bad inputs. Evaluator choice:
tests/engine/test_evaluation.py; the checks before a run: tests/engine/test_checks.py.
"""

import json
import math
import os
import re
import shutil

import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("panopticapi")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import HookBase, default_argument_parser  # noqa: E402

from panet_d2.data import register_synthetic_dataset  # noqa: E402
from panet_d2.engine import PANetTrainer, adapt_config_to_machine  # noqa: E402
from panet_d2.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DatasetError,
    ImageLoadError,
    InputError,
)

from ..common import (  # noqa: E402
    ROOT,
    logged_messages,
    register_coco,
    run_script,
    synthetic_datasets,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PREFIX = "test_train_net_synth"  # the generated dataset, registered with a temporary cache
SMALL = "test_train_net_small"  # 4 generated validation images (test-time augmentation)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The generated dataset in a temporary PANET_D2_DATASETS, under test names."""
    with synthetic_datasets(tmp_path_factory, PREFIX) as root:
        register_synthetic_dataset(SMALL, root=root, splits={"val": {"num_images": 4, "seed": 3}})
        yield root


def _args(
    out_dir, *opts, eval_only=False, resume=False, train=PREFIX + "_train", test=PREFIX + "_val"
):
    argv = ["--config-file", SMOKE, "--num-gpus", "1"]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    argv += [
        "OUTPUT_DIR",
        str(out_dir),
        "DATASETS.TRAIN",
        "('{}',)".format(train) if train else "()",
        "DATASETS.TEST",
        "('{}',)".format(test) if test else "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "7",
        "MODEL.DEVICE",
        "cpu",
    ]
    return default_argument_parser().parse_args(argv + [str(o) for o in opts])


class _Killed(Exception):
    pass


class _Kill(HookBase):
    """Stops training (like a killed job) at the end of iteration `at`, after the checkpoint."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise _Killed()


class _Record(HookBase):
    """Records the start iteration and the learning rate of every iteration."""

    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log["start_iter"] = self.trainer.start_iter

    def before_step(self):
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        self.log.setdefault("lr", {})[self.trainer.iter] = lr


def _with_hooks(monkeypatch, train_net, *extra):
    def build_hooks(self):
        return PANetTrainer.build_hooks(self) + list(extra)

    monkeypatch.setattr(train_net.Trainer, "build_hooks", build_hooks)


def _assert_same_results(a, b):
    assert set(a) == set(b)
    for task in a:
        assert set(a[task]) == set(b[task]), task
        for k in a[task]:
            x, y = a[task][k], b[task][k]
            assert (math.isnan(x) and math.isnan(y)) or x == y, (task, k, x, y)


@pytest.fixture(scope="module")
def run_a(train_net, datasets, tmp_path_factory):
    """The uninterrupted smoke run: 6 iterations, checkpoints after iterations 2 and 5."""
    out = tmp_path_factory.mktemp("run_a")
    log = {}
    with pytest.MonkeyPatch.context() as mp:
        _with_hooks(mp, train_net, _Record(log))
        results = train_net.main(_args(out))
    # its log now: Detectron2's file handlers stay, later runs in this process append to it
    with open(os.path.join(out, "log.txt")) as f:
        text = f.read()
    return {"out": str(out), "results": results, "log": log, "log_text": text}


def test_train_evaluates_and_saves_checkpoints(run_a):
    out, results = run_a["out"], run_a["results"]
    for name in ("model_0000002.pth", "model_0000005.pth", "model_final.pth", "config.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert "AP" in results[task] and "AP50" in results[task]
    # Detectron2's progress logging and metrics
    text = run_a["log_text"]
    assert "eta:" in text and "iter: 5" in text and "total_loss" in text and "lr:" in text
    assert "Evaluation results for {}_val".format(PREFIX) in text
    # MODEL.WEIGHTS "": said once, not as Detectron2's "Loading from  ..." with an empty path
    assert not re.search(r"Loading from\s+\.\.\.", text), "an empty path was logged"
    assert text.count("No weights (MODEL.WEIGHTS is empty): random initialisation.") == 1
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    last = [m for m in metrics if "bbox/AP" in m][-1]
    assert last["bbox/AP"] == results["bbox"]["AP"] or math.isnan(results["bbox"]["AP"])
    # our checkpointer wrote it, with the training state
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["iteration"] == 5 and ckpt["trainer"]["iteration"] == 5
    assert "optimizer" in ckpt["trainer"]["_trainer"]
    assert {"LRScheduler", "ResumeStateHook"} <= set(ckpt["trainer"]["hooks"])


def test_eval_only_reproduces_training_metrics(run_a, train_net, tmp_path):
    weights = os.path.join(run_a["out"], "model_final.pth")
    results = train_net.main(_args(tmp_path, "MODEL.WEIGHTS", weights, eval_only=True))
    _assert_same_results(results, run_a["results"])
    # --resume evaluates the checkpoint last_checkpoint names, and says MODEL.WEIGHTS is not read
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(weights, out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_final.pth")
    other = os.path.join(run_a["out"], "model_0000002.pth")
    with logged_messages() as logged:
        args = _args(out, "MODEL.WEIGHTS", other, eval_only=True, resume=True)
        _assert_same_results(train_net.main(args), run_a["results"])
    assert (
        "--eval-only --resume: evaluating {!r} (named by last_checkpoint), not MODEL.WEIGHTS={!r}; "
        "without --resume, MODEL.WEIGHTS is evaluated.".format(str(out / "model_final.pth"), other)
        in logged
    )


def test_resume_continues_the_same_run(run_a, train_net, tmp_path, monkeypatch):
    out = tmp_path / "run_b"
    # run B: killed after iteration 2 (the checkpoint model_0000002.pth is written first)
    _with_hooks(monkeypatch, train_net, _Kill(2))
    with pytest.raises(_Killed):
        train_net.main(_args(out, test=None))
    with open(out / "last_checkpoint") as f:
        assert f.read().strip() == "model_0000002.pth"
    a2 = torch.load(os.path.join(run_a["out"], "model_0000002.pth"), weights_only=True)
    b2 = torch.load(out / "model_0000002.pth", weights_only=True)
    for k, v in a2["model"].items():
        assert torch.equal(v, b2["model"][k]), k  # the runs are deterministic

    # --resume: continues at iteration 3 with the LR schedule of the uninterrupted run
    log = {}
    _with_hooks(monkeypatch, train_net, _Record(log))
    train_net.main(_args(out, resume=True, test=None))
    assert log["start_iter"] == 3
    with open(out / "log.txt") as f:  # panet_d2's loggers reach log.txt (train_net sets them up)
        text = f.read()
    assert (
        "panet_d2.engine.resume INFO: Resuming at iteration 3: the training sampler skips "
        "the 6 samples already used." in text
    )
    assert "Restored the random generator states" in text
    assert sorted(log["lr"]) == [3, 4, 5]
    for it in (3, 4, 5):
        assert log["lr"][it] == pytest.approx(run_a["log"]["lr"][it], rel=1e-12)
    assert len(set(run_a["log"]["lr"].values())) > 3  # warmup and a step: the LR changes

    a = torch.load(os.path.join(run_a["out"], "model_final.pth"), weights_only=True)
    b = torch.load(out / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 5
    ta, tb = a["trainer"], b["trainer"]
    assert ta["hooks"]["LRScheduler"] == tb["hooks"]["LRScheduler"]  # LR schedule state
    opt_a, opt_b = ta["_trainer"]["optimizer"], tb["_trainer"]["optimizer"]
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    assert set(opt_a["state"]) == set(opt_b["state"])
    for k, st in opt_a["state"].items():  # SGD momentum buffers
        assert torch.allclose(
            st["momentum_buffer"], opt_b["state"][k]["momentum_buffer"], rtol=1e-5, atol=1e-7
        ), k
    assert set(a["model"]) == set(b["model"])
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-5, atol=1e-7), k
    moved = [k for k, v in a["model"].items() if not torch.equal(v, a2["model"][k])]
    assert moved  # training did change the parameters after the resumed checkpoint


def test_test_time_augmentation(run_a, train_net, tmp_path):
    weights = os.path.join(run_a["out"], "model_final.pth")
    tta = [
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(64, 96)",  # small: the machinery, not the accuracy
        "TEST.AUG.MAX_SIZE",
        "128",
        "TEST.AUG.FLIP",
        "True",
    ]
    res = train_net.main(
        _args(
            tmp_path / "eval", "MODEL.WEIGHTS", weights, *tta, eval_only=True, test=SMALL + "_val"
        )
    )
    assert {"bbox", "segm", "bbox_TTA", "segm_TTA"} <= set(res)
    assert os.path.isdir(tmp_path / "eval" / "inference_TTA")
    # after training: an extra evaluation with TTA (Detectron2's EvalHook(0, test_with_TTA))
    res = train_net.main(_args(tmp_path / "train", "SOLVER.MAX_ITER", 1, *tta, test=SMALL + "_val"))
    assert {"bbox", "segm", "bbox_TTA", "segm_TTA"} <= set(res)
    with open(tmp_path / "train" / "metrics.json") as f:
        keys = set().union(*(json.loads(line) for line in f if line.strip()))
    assert "bbox_TTA/AP" in keys and "bbox/AP" in keys


def test_panoptic_main_job(train_net, datasets, tmp_path):
    """The README's main job, for one iteration: trains on the panoptic records, evaluates all."""
    config = os.path.join(ROOT, "configs", "quick_schedules", "panoptic_panet_R_18_synth.yaml")
    args = _args(
        tmp_path, "SOLVER.MAX_ITER", 1, train=SMALL + "_val_panoptic", test=SMALL + "_val_panoptic"
    )
    args.config_file = config
    results = train_net.main(args)
    assert set(results) == {"panoptic_seg", "bbox", "segm", "sem_seg"}
    assert {"PQ", "PQ_th", "PQ_st"} <= set(results["panoptic_seg"])
    assert "mIoU" in results["sem_seg"]


def test_device_and_amp_fall_back_on_cpu():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    notes = adapt_config_to_machine(cfg)
    if torch.cuda.is_available():
        assert cfg.MODEL.DEVICE == "cuda" and cfg.SOLVER.AMP.ENABLED and not notes
    else:
        assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED and len(notes) == 2


# -------------------------------------------------------------------------------------------------
# Clear errors
# -------------------------------------------------------------------------------------------------
def _small_coco_copy(tmp_path, num_images=2):
    """A COCO dataset with the first `num_images` generated training images, in tmp_path."""
    DatasetCatalog.get(PREFIX + "_train")  # generate the split
    meta = MetadataCatalog.get(PREFIX + "_train")
    with open(meta.json_file) as f:
        data = json.load(f)
    data["images"] = data["images"][:num_images]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    images = tmp_path / "images"
    images.mkdir()
    for im in data["images"]:
        shutil.copy(os.path.join(meta.image_root, im["file_name"]), images / im["file_name"])
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(images), [im["file_name"] for im in data["images"]]


def test_error_unregistered_dataset(train_net, datasets, tmp_path):
    with pytest.raises(DatasetError) as e:
        train_net.main(_args(tmp_path, train="no_such_dataset"))
    assert "'no_such_dataset' in DATASETS.TRAIN is not registered" in str(e.value)
    assert str(e.value).endswith(  # (not "train_net.py imports" in the other tools)
        "in a module that the script imports (train_net.py, tools/*.py: before their main), or fix "
        "DATASETS.TRAIN."
    )
    with pytest.raises(
        DatasetError,
        match=r"'{}_vall' in DATASETS.TEST is not registered.*"
        r"Did you mean: '{}_val'".format(PREFIX, PREFIX),
    ):
        train_net.main(_args(tmp_path, test=PREFIX + "_vall", eval_only=True))


def test_error_missing_dataset_files(train_net, datasets, tmp_path):
    missing = tmp_path / "nowhere"
    name = register_coco(
        "t_missing_files", str(missing / "instances.json"), str(missing / "images")
    )
    with pytest.raises(DatasetError) as e:
        train_net.main(_args(tmp_path / "out", train=name))
    msg = str(e.value)
    assert "t_missing_files" in msg and str(missing / "instances.json") in msg
    assert "does not exist" in msg
    # the image folder alone missing
    json_file, _, _ = _small_coco_copy(tmp_path)
    name = register_coco("t_missing_images", json_file, str(missing / "images"))
    expected = "image_root .*nowhere/images.* of dataset 't_missing_images'.*does not exist"
    with pytest.raises(DatasetError, match=expected):
        train_net.main(_args(tmp_path / "out2", test=name, eval_only=True))


def test_error_unparseable_annotations(train_net, datasets, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [ {not json')
    (tmp_path / "images").mkdir()
    name = register_coco("t_bad_json", str(bad), str(tmp_path / "images"))
    with pytest.raises(DatasetError) as e:
        train_net.main(_args(tmp_path / "out", train=name))
    msg = str(e.value)
    assert "t_bad_json" in msg and str(bad) in msg and "JSONDecodeError" in msg


def test_error_missing_or_unreadable_image(train_net, datasets, tmp_path):
    json_file, images, names = _small_coco_copy(tmp_path)
    # a missing image, wherever it is in the dataset: found before training
    missing = os.path.join(images, names[1])
    os.rename(missing, missing + ".moved")
    name = register_coco("t_missing_image", json_file, images)
    expected = "{!r} of dataset 't_missing_image' ({}) does not exist"
    with pytest.raises(ImageLoadError, match=re.escape(expected.format(missing, "DATASETS.TRAIN"))):
        train_net.main(_args(tmp_path / "out1", train=name))
    with pytest.raises(ImageLoadError, match=re.escape(expected.format(missing, "DATASETS.TEST"))):
        train_net.main(_args(tmp_path / "out1", test=name, eval_only=True))
    # unreadable (corrupt) image: Detectron2's read_image fails in the loader, naming the file
    with open(missing, "wb") as f:
        f.write(b"this is not a png")
    with pytest.raises(OSError, match=re.escape(missing)):
        train_net.main(_args(tmp_path / "out2", train=name, test=None))


class _Raise(HookBase):
    """Raises `error` at the end of iteration 1 (Detectron2's writers need one full iteration)."""

    def __init__(self, error):
        self.error = error

    def after_step(self):
        if self.trainer.iter == 1:
            raise self.error


def test_input_error_during_training_is_logged_as_one_line(
    train_net, datasets, tmp_path, monkeypatch
):
    error = CheckpointError("Cannot save checkpoint 'model.pth': No space left on device")
    _with_hooks(monkeypatch, train_net, _Raise(error))
    with pytest.raises(CheckpointError):
        train_net.main(_args(tmp_path, "SOLVER.MAX_ITER", 3, test=None))
    log = (tmp_path / "log.txt").read_text()
    assert "Exception during training: CheckpointError: " + str(error) in log
    assert "Traceback" not in log


def test_error_checkpoints(run_a, train_net, tmp_path):
    nowhere = str(tmp_path / "no_such_model.pth")
    with pytest.raises(CheckpointError, match="no_such_model.pth.*does not exist"):
        train_net.main(_args(tmp_path / "a", "MODEL.WEIGHTS", nowhere, eval_only=True))
    # training may start from scratch (an empty path); evaluating may not: not offered
    with pytest.raises(CheckpointError, match="no_such_model.pth.*does not exist.*from scratch"):
        train_net.main(_args(tmp_path / "b", "MODEL.WEIGHTS", nowhere, test=None))
    folder = re.escape("Checkpoint {!r} is a folder (MODEL.WEIGHTS".format(str(tmp_path)))
    with pytest.raises(CheckpointError, match=folder) as e:
        train_net.main(_args(tmp_path / "d", "MODEL.WEIGHTS", str(tmp_path), eval_only=True))
    assert "scratch" not in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read checkpoint.*garbage.pth"):
        train_net.main(_args(tmp_path / "c", "MODEL.WEIGHTS", str(garbage), eval_only=True))
    # a checkpoint of another architecture (FPN with 64 channels into one with 32)
    weights = os.path.join(run_a["out"], "model_final.pth")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        train_net.main(
            _args(
                tmp_path / "d",
                "MODEL.WEIGHTS",
                weights,
                "MODEL.FPN.OUT_CHANNELS",
                32,
                eval_only=True,
            )
        )


def test_error_config_file_and_evaluator(train_net, datasets, tmp_path):
    args = _args(tmp_path)
    args.config_file = str(tmp_path / "no_such_config.yaml")
    with pytest.raises(InputError, match="no_such_config.yaml"):
        train_net.main(args)
    name = "t_weird_evaluator"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(PREFIX + "_val"))
    MetadataCatalog.get(name).set(evaluator_type="weird", thing_classes=["a", "b", "c"])
    with pytest.raises(DatasetError, match="t_weird_evaluator.*'weird'.*coco"):
        train_net.main(_args(tmp_path, test=name))


def test_command_line_error_has_no_traceback(tmp_path):
    proc = run_script(
        "train_net.py",
        "--config-file",
        SMOKE,
        "OUTPUT_DIR",
        tmp_path / "out",
        "DATASETS.TRAIN",
        "('no_such_dataset',)",
        cwd=tmp_path,
        PANET_D2_DATASETS=str(tmp_path / "datasets"),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ERROR: Dataset 'no_such_dataset' in DATASETS.TRAIN is not registered" in proc.stderr
    assert "Traceback" not in proc.stderr


class _MomentumBuffer(HookBase):
    """Records, before each step, the momentum buffer of the first trained tensor."""

    def __init__(self, log):
        self.log = log

    def before_step(self):
        opt = self.trainer.optimizer
        buf = opt.state.get(opt.param_groups[0]["params"][0], {}).get("momentum_buffer")
        self.log[self.trainer.iter] = None if buf is None else buf.clone()


def test_scale_momentum_at_the_lr_step(train_net, datasets, tmp_path):
    """SOLVER.SCALE_MOMENTUM (Detectron's, the release configs): before the first step at the
    lowered learning rate, the momentum buffers are those of the same run without it times
    SOLVER.GAMMA; before that step the two runs are equal."""
    logs = {}
    for scale in (False, True):
        logs[scale] = {}
        opts = ["SOLVER.MAX_ITER", 3, "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", 0]
        opts += ["SOLVER.GAMMA", 0.25, "SOLVER.SCALE_MOMENTUM", scale]
        with pytest.MonkeyPatch.context() as mp:
            _with_hooks(mp, train_net, _MomentumBuffer(logs[scale]))
            train_net.main(_args(tmp_path / str(scale), *opts, test=None))
    plain, scaled = logs[False], logs[True]
    assert plain[0] is None and torch.equal(plain[1], scaled[1])
    assert torch.allclose(scaled[2], plain[2] * 0.25, rtol=1e-6, atol=0)
    assert not torch.allclose(plain[2], plain[1])  # the step in between changed the buffer


def test_error_empty_test_dataset(run_a, train_net, tmp_path):
    """--eval-only on a test dataset without images: one DatasetError (Detectron2: an
    AssertionError from its loader)."""
    json_file = tmp_path / "empty.json"
    categories = MetadataCatalog.get(PREFIX + "_val").thing_classes
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    name = register_coco("t_empty", str(json_file), str(tmp_path))
    weights = os.path.join(run_a["out"], "model_final.pth")
    with pytest.raises(DatasetError) as e:
        train_net.main(_args(tmp_path / "out", "MODEL.WEIGHTS", weights, test=name, eval_only=True))
    assert str(e.value) == (
        "Dataset 't_empty' in DATASETS.TEST has no images (json_file={!r}): nothing to evaluate. "
        "Give it images, or remove it from DATASETS.TEST.".format(str(json_file))
    )


def test_error_last_checkpoint_names_a_missing_file(run_a, train_net, tmp_path):
    """--resume (training and --eval-only) where last_checkpoint names a file that does not
    exist: the error names last_checkpoint and the file, not MODEL.WEIGHTS."""
    shutil.copy(os.path.join(run_a["out"], "model_0000002.pth"), tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    expected = (
        "--resume: {!r} names the checkpoint 'model_0000009.pth', which does not exist. The "
        "checkpoints in {!r}: model_0000002.pth. Write the name of the checkpoint to resume from "
        "into last_checkpoint, or remove last_checkpoint to start from MODEL.WEIGHTS.".format(
            str(tmp_path / "last_checkpoint"), str(tmp_path)
        )
    )
    for eval_only in (False, True):
        with pytest.raises(CheckpointError) as e:
            train_net.main(_args(tmp_path, resume=True, eval_only=eval_only, test=None))
        assert str(e.value) == expected
    # one that names a folder, or a URL (fvcore joins it to the folder: an AssertionError before)
    (tmp_path / "model_0000005.pth").mkdir()
    for named, what in (("model_0000005.pth", "is a folder"), ("https://x/m.pth", "is a URL, ")):
        (tmp_path / "last_checkpoint").write_text(named)
        with pytest.raises(CheckpointError, match=f"names the checkpoint '{named}', which {what}"):
            train_net.main(_args(tmp_path, resume=True, test=None))
    # a last_checkpoint that names nothing, or is no text, or too long to be a name, or a folder
    last = tmp_path / "last_checkpoint"
    for content, problem in (
        (b"", "is empty"),
        (b"\x00\xff", "is not text"),
        (b"m" * 5000, "is 5000 bytes"),
        (None, "is a folder"),
    ):
        last.unlink()
        last.mkdir() if content is None else last.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            train_net.main(_args(tmp_path, resume=True, test=None))
        assert str(e.value).startswith(
            "--resume: {!r} {}: it must be a text file naming the checkpoint".format(
                str(last), problem
            )
        ), str(e.value)


def test_resume_from_a_checkpoint_without_trainer_state_refused(run_a, train_net, tmp_path):
    """--resume from a checkpoint without the trainer's state (Detectron2's plain_train_net
    writes {model, optimizer, scheduler, iteration}; a weights-only file: {model}) started over at
    iteration 1 while saying it resumed, and overwrote the run's checkpoints; a hand-edited
    iteration gave a TypeError or trained from iteration -47. One line each, before a step."""
    checkpoint = torch.load(os.path.join(run_a["out"], "model_0000002.pth"), weights_only=True)
    trainer = checkpoint.pop("trainer")
    plain = {**checkpoint, "optimizer": trainer["_trainer"]["optimizer"], "iteration": 2}
    cases = [
        (plain, r"holds no trainer state \(iteration, optimizer, schedule: weights only, or "),
        ({"model": checkpoint["model"]}, r"holds no trainer state"),
        ({**checkpoint, "trainer": {**trainer, "iteration": "abc"}}, r"iteration 'abc': it must "),
        (
            {**checkpoint, "trainer": {**trainer, "iteration": -50}},
            r"iteration -50: it must be an ",
        ),
    ]
    for i, (content, message) in enumerate(cases):
        out = tmp_path / str(i)
        out.mkdir()
        torch.save(content, str(out / "model_0000002.pth"))
        (out / "last_checkpoint").write_text("model_0000002.pth")
        with pytest.raises(
            CheckpointError, match=r"^--resume: the checkpoint 'model_0000002.pth' "
        ):
            with pytest.raises(CheckpointError, match=message) as e:
                train_net.main(_args(out, resume=True, test=None))
            raise e.value
        assert "model_final.pth" not in os.listdir(out)  # not a step trained


def test_a_new_run_keeps_the_previous_runs_files(run_a, train_net, tmp_path, capsys):
    """A run without --resume in an OUTPUT_DIR where a run left checkpoints (Detectron2:
    overwritten, its log and metrics mixed with the new run's) first moves that run's files to
    OUTPUT_DIR/previous_run_N, untouched, and says so; other files stay. A MODEL.WEIGHTS among
    them is refused; --resume, --eval-only and a folder without checkpoints move nothing."""
    out = tmp_path / "out"
    shutil.copytree(run_a["out"], out)
    (out / "notes.txt").write_text("mine")
    before = {n: (out / n).read_bytes() for n in os.listdir(out) if (out / n).is_file()}
    before.pop(train_net.LOCK_FILE, None)
    before.pop("notes.txt")
    assert "model_final.pth" in before and "last_checkpoint" in before
    with pytest.raises(ConfigError, match=r"^MODEL.WEIGHTS=.*model_final.pth' is a checkpoint of"):
        train_net.main(_args(out, "MODEL.WEIGHTS", out / "model_final.pth", test=None))
    for eval_only, resume in ((True, False), (False, True)):  # nothing moved
        args = _args(out, eval_only=eval_only, resume=resume)
        cfg, _ = train_net.checked_config(args)
        with train_net.owning_output_dir(cfg, args) as notes:
            assert notes == [] and not (out / "previous_run_1").exists()
    train_net.main(_args(out, "SOLVER.MAX_ITER", 2, test=None))
    kept = out / "previous_run_1"
    assert {n: (kept / n).read_bytes() for n in before} == before
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_final.pth").exists()
    assert (
        "previous run's checkpoints (last_checkpoint, model_0000002.pth, "
        in (out / "log.txt").read_text()
    )
    logged = (out / "log.txt").read_bytes()
    train_net.main(_args(out, "SOLVER.MAX_ITER", 2, test=None))  # the next one: previous_run_2
    assert (out / "previous_run_2" / "model_final.pth").exists()
    # this process's log file (Detectron2 keeps it open) goes on in OUTPUT_DIR, the old one kept
    assert (out / "previous_run_2" / "log.txt").read_bytes() == logged
    assert "moved with its logs, metrics and config to" in (out / "log.txt").read_text()
    # untouched by the later runs of this process (Detectron2 keeps its log file open)
    assert {n: (kept / n).read_bytes() for n in before} == before
    # a run refused by the checks that load no dataset (config values, dataset names): nothing
    # moved; one that moved them and then failed a dataset's checks: --resume names where they went
    shutil.rmtree(out)
    shutil.copytree(run_a["out"], out)
    for opts in (("MODEL.FPN.FUSE_TYPE", "max"), ()):
        with pytest.raises((ConfigError, DatasetError)):
            train_net.main(_args(out, *opts, train="t_no_such_dataset", test=None))
    assert not (out / "previous_run_1").exists()
    DatasetCatalog.register("t_loader_fails", lambda: 1 / 0)
    try:
        with pytest.raises(DatasetError, match="^Cannot load dataset 't_loader_fails'"):
            train_net.main(_args(out, train="t_loader_fails", test=None))
    finally:
        DatasetCatalog.remove("t_loader_fails")
    assert (out / "previous_run_1" / "last_checkpoint").exists()
    with pytest.raises(ConfigError, match=r"^--resume: OUTPUT_DIR=.* has no last_checkpoint; the"):
        train_net.main(_args(out, resume=True, test=None))
    shutil.rmtree(out)
    out.mkdir()
    cfg, _ = train_net.checked_config(_args(out))
    with train_net.owning_output_dir(cfg, _args(out)) as notes:
        assert notes == []
