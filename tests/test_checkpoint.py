# -*- coding: utf-8 -*-
"""
Checkpoints that cannot run code, and no result from a model that is not the one loaded (issue
17): crafted files (a .pth and a .pkl whose payload would create a marker folder, checkpoints of
another architecture / class count / with no tensor of the model, a truncated file), a failing
writer (ENOSPC, EACCES), NaN weights, a diverging run, --resume with other solver values, and the
error lines of train_net.py, demo.py and tools/export_model.py. Small R-18 models, CPU.
"""

import errno
import io
import os
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

import fvcore.common.checkpoint as fvcore_checkpoint  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import HookBase, default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

from panet_d2 import PANetCheckpointer  # noqa: E402
from panet_d2.checkpoint import read_checkpoint  # noqa: E402
from panet_d2.engine import PANetTrainer  # noqa: E402
from panet_d2.errors import CheckpointError, TrainingDivergedError  # noqa: E402

from .common import (  # noqa: E402
    ROOT,
    FileProxy,
    error_exit,
    load_script,
    panet_cfg,
    start_script,
    synthetic_datasets,
)

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE = "quick_schedules/panet_R_18_synth_instance.yaml"
PANOPTIC = "quick_schedules/panoptic_panet_R_18_synth.yaml"
SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PREFIX = "t_ckpt_safety"  # 4 generated validation images


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with synthetic_datasets(
        tmp_path_factory, PREFIX, {"val": {"num_images": 4, "seed": 3}}
    ) as root:
        yield root


def _model(config=INSTANCE, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(panet_cfg(config, opts=list(opts)))


@pytest.fixture(scope="module")
def instance_state():
    """The state dict of a freshly built instance model (AFP and FF on, 3 classes)."""
    return {k: v.clone() for k, v in _model().state_dict().items()}


class _Payload:
    """Unpickling it calls os.mkdir(marker): code run from a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted(tmp_path, state):
    """A .pth and a .pkl with the model's tensors and a payload; returns (pth, pkl, marker)."""
    marker = str(tmp_path / "code_ran")
    pth, pkl = str(tmp_path / "crafted.pth"), str(tmp_path / "crafted.pkl")
    torch.save({"model": state, "iteration": _Payload(marker)}, pth)
    arrays = {k: v.numpy() for k, v in state.items()}
    with open(pkl, "wb") as f:
        pickle.dump({"model": arrays, "__author__": _Payload(marker)}, f)
    return pth, pkl, marker


def _refused(path):
    return (
        "Checkpoint {!r} was not loaded: besides tensors and plain values it holds the Python "
        "object 'posix.mkdir', which loading would call".format(path)
    )


# -------------------------------------------------------------------------------------------------
# Loading never runs code from a file
# -------------------------------------------------------------------------------------------------
def test_code_running_files_are_refused(instance_state, tmp_path):
    pth, pkl, marker = _crafted(tmp_path, instance_state)
    model = _model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path in (pth, pkl):
        for warm_start in (False, True):
            with pytest.raises(CheckpointError) as e:
                PANetCheckpointer(model, warm_start=warm_start).load(path)
            assert str(e.value).startswith(_refused(path)), str(e.value)
            assert "panet_d2 reads tensors (a torch file) or NumPy arrays (a .pkl)" in str(e.value)
            assert "\n" not in str(e.value)
    assert not os.path.exists(marker)  # nothing ran
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    # the payload does run when unpickled as Detectron2 reads a .pkl: the test file is real
    with open(pkl, "rb") as f:
        pickle.Unpickler(f, encoding="latin1").load()
    assert os.path.isdir(marker)


def test_numpy_arrays_in_a_torch_file_are_refused_saying_where_they_load(instance_state, tmp_path):
    """torch's weights-only loader (as Detectron2's checkpointer calls it) refuses NumPy arrays in a
    torch file; the message must not claim that panet_d2 reads them there, and names the .pkl."""
    path = str(tmp_path / "numpy_arrays.pth")
    torch.save({"model": {k: v.numpy() for k, v in instance_state.items()}}, path)
    with pytest.raises(CheckpointError) as e:
        PANetCheckpointer(_model(seed=1)).load(path)
    message = str(e.value)
    assert (
        "_reconstruct" in message and "tensors (a torch file) or NumPy arrays (a .pkl)" in message
    )
    with pytest.raises(pickle.UnpicklingError):  # torch itself, weights-only
        torch.load(path, weights_only=True)


def test_importing_panet_d2_patches_nothing():
    # Detectron2's and fvcore's checkpointers are their own; nothing added to torch's allow-list
    assert (
        DetectionCheckpointer._load_file.__module__ == "detectron2.checkpoint.detection_checkpoint"
    )
    assert (
        DetectionCheckpointer._torch_load.__module__ == "detectron2.checkpoint.detection_checkpoint"
    )
    assert fvcore_checkpoint.Checkpointer._load_file.__module__ == "fvcore.common.checkpoint"
    allowed = [
        "{}.{}".format(getattr(g, "__module__", ""), getattr(g, "__name__", g))
        for g in torch.serialization.get_safe_globals()
    ]
    assert not [g for g in allowed if g.startswith(("panet_d2", "numpy", "posix", "os."))]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pkl_files_load(instance_state, tmp_path, protocol):
    # Detectron2's model-zoo format: NumPy arrays (float32, and an int64 counter), "__author__"
    arrays = {k: v.numpy() for k, v in instance_state.items()}
    path = str(tmp_path / "model_zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    model = _model(seed=1)
    PANetCheckpointer(model).load(path)
    assert all(torch.equal(v, instance_state[k]) for k, v in model.state_dict().items())
    # numbers, strings, containers and NumPy scalars are plain values
    plain = {"a": [1, 2.5, "x", (3, None)], "b": {1, 2}, "c": np.float32(1.5), "d": b"\x00"}
    with open(path, "wb") as f:
        pickle.dump(plain, f, protocol=protocol)
    assert read_checkpoint(path) == plain


def test_a_torch_file_named_pkl_is_told_to_be_renamed(instance_state, tmp_path):
    """A .pkl is read as a pickle of NumPy arrays, as Detectron2 reads it (which fails on
    torch.save's zip with "persistent IDs in protocol 0 must be ASCII strings"): one line that
    says what the file is and what to do; renamed, it loads."""
    path = str(tmp_path / "model.pkl")
    torch.save({"model": instance_state}, path)
    model = _model(seed=1)
    with pytest.raises(CheckpointError, match=r"is a torch file \(torch.save\) named .pkl, .*: "):
        PANetCheckpointer(model).load(path)
    os.rename(path, path[: -len(".pkl")] + ".pth")
    PANetCheckpointer(model).load(path[: -len(".pkl")] + ".pth")
    assert all(torch.equal(v, instance_state[k]) for k, v in model.state_dict().items())


def test_project_checkpoints_load_with_weights_only(tmp_path):
    # what convert_panet_release.py writes: {"model": tensors} and plain-value metadata
    state = {"w": torch.ones(2)}
    path = str(tmp_path / "release.pth")
    torch.save({"model": state, "matching_heuristics": False, "source": {"epoch": 3}}, path)
    assert read_checkpoint(path)["source"] == {"epoch": 3}


def test_truncated_and_garbage_files(instance_state, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": instance_state}, str(path))
    data = path.read_bytes()
    model = _model(seed=1)
    garbage = ("garbage.pth", b"not a checkpoint\n")  # torch's refusal advises weights_only=False
    for name, content in [("truncated.pth", data[: len(data) // 2]), ("empty.pkl", b""), garbage]:
        bad = str(tmp_path / name)
        with open(bad, "wb") as f:
            f.write(content)
        with pytest.raises(CheckpointError) as e:
            PANetCheckpointer(model).load(bad)
        assert str(e.value).startswith("Cannot read checkpoint {!r}: ".format(bad))
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


# -------------------------------------------------------------------------------------------------
# Only weights that fit: every tensor of the model from the file (but a warm start)
# -------------------------------------------------------------------------------------------------
def _save(tmp_path, name, state):
    path = str(tmp_path / name)
    torch.save({"model": state}, path)
    return path


def _error(model, path, **kwargs):
    with pytest.raises(CheckpointError) as e:
        PANetCheckpointer(model, **kwargs).load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_class_count_mismatch(instance_state, tmp_path):
    path = _save(tmp_path, "three_classes.pth", instance_state)
    two = _model(INSTANCE, "MODEL.ROI_HEADS.NUM_CLASSES", 2, seed=1)
    msg = _error(two, path)
    assert (
        "roi_heads.box_predictor.cls_score.weight has 3 classes in the file, the config "
        "MODEL.ROI_HEADS.NUM_CLASSES 2: set MODEL.ROI_HEADS.NUM_CLASSES 3" in msg
    )
    assert "6 class-dependent tensor(s) differ" in msg
    # fine-tuning to 2 classes (a warm start): every other tensor loaded, the predictors new
    fresh = {k: v.clone() for k, v in two.state_dict().items()}
    PANetCheckpointer(two, warm_start=True).load(path)
    for k, v in two.state_dict().items():
        if k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")):
            assert torch.equal(v, fresh[k]), k
        else:
            assert torch.equal(v, instance_state[k]), k


def test_architecture_mismatch(instance_state, tmp_path):
    with_afp = _save(tmp_path, "afp.pth", instance_state)
    no_afp_model = _model(INSTANCE, "MODEL.AFP.ENABLED", False, seed=1)
    msg = _error(no_afp_model, with_afp)
    assert "4 of its 160 tensors are not in the file (roi_heads.box_head.fc1.bias" in msg
    assert "the file has AFP per-level weights: set MODEL.AFP.ENABLED True (with MODEL.AFP." in msg
    # the other way: single-level fc1 / conv1 (Detectron2's layout) into an AFP model: refused,
    # but a warm start when training (copied to every level)
    no_afp = _save(tmp_path, "no_afp.pth", no_afp_model.state_dict())
    model = _model(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert "set MODEL.AFP.ENABLED False" in _error(model, no_afp)
    # a refused file leaves the model as it was (the check runs on what fvcore loaded)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    PANetCheckpointer(model, warm_start=True).load(no_afp)
    fc1 = model.roi_heads.box_head.fc1.per_level.weight
    assert torch.equal(fc1[0], no_afp_model.roi_heads.box_head.fc1.weight)
    assert torch.equal(fc1[0], fc1[3])
    # AFP fused before the box head's fc1 (one fc1, as without AFP), the mask head's after its
    # conv1 (per level), against a checkpoint of both after: the box position named
    before = _model(INSTANCE, "MODEL.AFP.BOX_FUSE_POSITION", "before_first_layer", seed=3)
    msg = _error(before, with_afp)
    assert (
        "the file has a box fc1 per level: set MODEL.AFP.BOX_FUSE_POSITION after_first_layer" in msg
    )
    # a checkpoint of the box head fused before (the mask head's after), or of both before, into
    # a model of both after: the single-level tensors read both ways
    both = ["MODEL.AFP.BOX_FUSE_POSITION", "before_first_layer"]
    both += ["MODEL.AFP.MASK_FUSE_POSITION", "before_first_layer"]
    both_before = _model(INSTANCE, *both, seed=5)
    for state in (before.state_dict(), both_before.state_dict()):
        msg = _error(_model(seed=4), _save(tmp_path, "before.pth", state))
        assert "or with AFP fused before them (set MODEL.AFP.BOX_FUSE_POSITION / MASK_FUSE" in msg
    # and the other way: AFP on, both fused before, against a default AFP checkpoint
    msg = _error(both_before, with_afp)
    assert (
        "set MODEL.AFP.ENABLED True (with MODEL.AFP.BOX_FUSE_POSITION / MASK_FUSE_POSITION " in msg
    )
    # without fully-connected fusion
    assert "set MODEL.FF.ENABLED False" in _error(
        _model(INSTANCE, "MODEL.FF.ENABLED", True, seed=1),
        _save(tmp_path, "no_ff.pth", _model(INSTANCE, "MODEL.FF.ENABLED", False).state_dict()),
    )
    # an instance checkpoint evaluated as a panoptic model
    msg = _error(_model(PANOPTIC, seed=1), with_afp)
    assert "23 of its 183 tensors are not in the file (sem_seg_head." in msg
    assert "the file has no semantic segmentation head (an instance-segmentation checkpoint)" in msg
    # other shapes outside the predictors: refused also for a warm start
    msg = _error(_model(INSTANCE, "MODEL.FPN.OUT_CHANNELS", 32), with_afp, warm_start=True)
    assert "tensor(s) have other shapes: backbone.fpn_lateral2.weight: checkpoint [64" in msg


def test_tensors_of_another_form_are_refused(instance_state, tmp_path):
    # tensors the model has no place for, in modules it has: another config, refused when
    # evaluating (Detectron2 would log them and evaluate the other model); a warm start takes them
    r34 = _save(tmp_path, "r34.pth", _model(INSTANCE, "MODEL.RESNETS.DEPTH", 34).state_dict())
    msg = _error(_model(seed=1), r34)
    # ResNet-34 has 1, 2, 4 and 1 more BasicBlocks per stage than ResNet-18: 8 blocks of 2 convs
    # with a FrozenBN each (weight; norm weight, bias, running mean and variance)
    assert "the file has 80 tensors of parts the model has in another form (backbone." in msg
    assert "(backbone.bottom_up.res2.2.conv1.norm.bias, " in msg
    PANetCheckpointer(_model(seed=1), warm_start=True).load(r34)
    bias = ["MODEL.PAFPN.NORM", "GN", "MODEL.PAFPN.CONV_BIAS"]
    with_bias = _save(tmp_path, "bias.pth", _model(INSTANCE, *bias, True).state_dict())
    msg = _error(_model(INSTANCE, *bias, False), with_bias)
    assert "the file has 6 tensors of parts" in msg and "(backbone.bpa_down3.bias, " in msg
    with_afp = _save(tmp_path, "afp.pth", instance_state)
    msg = _error(_model(INSTANCE, "MODEL.FF.ENABLED", False), with_afp)
    assert "the file has 6 tensors of parts" in msg and "set MODEL.FF.ENABLED True" in msg
    msg = _error(_model(INSTANCE, "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"), with_afp)
    assert "the file has 12 tensors" in msg and "set MODEL.BACKBONE.NAME build_resnet_pafpn" in msg
    # a whole head that the model has not is left out, as Detectron2 does: a mask model's boxes,
    # a panoptic model's instances
    panoptic = _save(tmp_path, "panoptic.pth", _model(PANOPTIC).state_dict())
    for model, path in [(_model(INSTANCE, "MODEL.MASK_ON", False), with_afp), (_model(), panoptic)]:
        PANetCheckpointer(model).load(path)
        state = torch.load(path)["model"]
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # the heavier box head (convolutions, then one fc) into a 2fc model: not "trained without AFP"
    heavy = ["MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.NUM_FC", 1]
    msg = _error(_model(seed=1), _save(tmp_path, "hhd.pth", _model(INSTANCE, *heavy).state_dict()))
    assert "a box head with convolutions (the heavier head)" in msg and "AFP" not in msg


def test_no_matching_tensor_and_no_weights(tmp_path):
    model = _model(seed=1)
    path = _save(tmp_path, "other.pth", {"encoder.weight": torch.zeros(3, 3)})
    for warm_start in (False, True):
        msg = _error(model, path, warm_start=warm_start)
        assert msg == (
            "Checkpoint {!r} holds none of the model's 160 tensors (it holds 1 tensor(s): "
            "encoder.weight): not a checkpoint of this model.".format(path)
        )
    assert _error(model, "").startswith("No checkpoint given (MODEL.WEIGHTS, ")
    assert PANetCheckpointer(model, warm_start=True).load("") == {}  # training from scratch


def test_eval_only_refuses_weights_that_do_not_fit(train_net, datasets, instance_state, tmp_path):
    def eval_only(out, *opts):
        argv = ["--config-file", SMOKE, "--eval-only", "OUTPUT_DIR", str(out)]
        argv += ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "('{}_val',)".format(PREFIX)]
        argv += ["DATASETS.TEST", "()"] if "MODEL.ROI_HEADS.NUM_CLASSES" in opts else []
        with pytest.raises(CheckpointError) as e:
            train_net.main(default_argument_parser().parse_args(argv + [str(o) for o in opts]))
        assert not os.path.exists(os.path.join(str(out), "inference"))  # nothing evaluated
        return str(e.value)

    assert "No checkpoint given" in eval_only(tmp_path / "a", "MODEL.WEIGHTS", "")
    path = _save(tmp_path, "three.pth", instance_state)
    msg = eval_only(tmp_path / "b", "MODEL.WEIGHTS", path, "MODEL.ROI_HEADS.NUM_CLASSES", 2)
    assert "set MODEL.ROI_HEADS.NUM_CLASSES 3" in msg


def test_code_running_checkpoint_from_the_command_line(datasets, instance_state, tmp_path):
    """train_net.py --eval-only and --resume (the file last_checkpoint names), demo.py,
    tools/export_model.py: one ERROR line, exit code 1, nothing run."""
    pth, pkl, marker = _crafted(tmp_path, instance_state)
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text(os.path.basename(pth))
    os.replace(pth, str(out / os.path.basename(pth)))
    pth = str(out / os.path.basename(pth))
    config = os.path.join(ROOT, "configs", INSTANCE)
    commands = [
        ["train_net.py", "--config-file", SMOKE, "--eval-only", "--resume", "OUTPUT_DIR", str(out)],
        ["demo.py", "--config-file", config, "--input", os.path.join(ROOT, "assets", "demo_images")]
        + ["--output", str(tmp_path / "vis"), "--opts", "MODEL.WEIGHTS", pkl],
        ["tools/export_model.py", "--config-file", config, "--output", str(tmp_path / "export")]
        + ["MODEL.WEIGHTS", pkl],
    ]
    commands[0] += ["DATASETS.TEST", "()"]  # train_net.py: loading the checkpoint fails first
    # side by side: each process spends seconds importing
    procs = [start_script(*argv, cwd=tmp_path, PANET_D2_DATASETS=datasets) for argv in commands]
    for argv, proc in zip(commands, procs):
        stderr = proc.communicate(timeout=300)[1]
        assert proc.returncode == 2, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        path = pth if "train_net" in argv[0] else pkl
        assert last.startswith("ERROR: " + _refused(path)), stderr[-3000:]
        assert "Traceback" not in stderr
    assert not os.path.exists(marker)


# -------------------------------------------------------------------------------------------------
# Saving: a failing writer, NaN weights
# -------------------------------------------------------------------------------------------------
class _FailingFile(io.RawIOBase):
    """A writable file that fails with ``err`` once ``limit`` bytes were written."""

    def __init__(self, f, err, limit):
        self._f, self._err, self._left = f, err, limit

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self._left:
            raise OSError(self._err, os.strerror(self._err))
        self._left -= len(b)
        return self._f.write(b)

    def close(self):
        self._f.close()
        super().close()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EDQUOT])
def test_failing_writer(tmp_path, monkeypatch, err):
    model = _model()
    checkpointer = PANetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    before = {n: (tmp_path / n).read_bytes() for n in ("model_0000001.pth", "last_checkpoint")}
    open_ = PathManager.open

    def open_failing(path, mode="r", **kwargs):
        f = open_(path, mode, **kwargs)
        return _FailingFile(f, err, 100000) if "w" in mode and ".pth" in path else f

    monkeypatch.setattr(PathManager, "open", open_failing)
    with pytest.raises(CheckpointError) as e:
        checkpointer.save("model_0000002")
    monkeypatch.undo()
    assert str(e.value) == (
        "Cannot save checkpoint {!r}: {} (the previous checkpoint is intact: last_checkpoint "
        "names 'model_0000001.pth').".format(str(tmp_path / "model_0000002.pth"), os.strerror(err))
    )
    assert sorted(os.listdir(tmp_path)) == sorted(before)  # no partial file
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    PANetCheckpointer(_model(seed=1), str(tmp_path)).resume_or_load("", resume=True)


def test_nan_weights_are_not_saved(tmp_path):
    model = _model()
    checkpointer = PANetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as e:  # Detectron2's type of a divergence
        checkpointer.save("model_0000002")
    assert isinstance(e.value, TrainingDivergedError)
    assert str(e.value) == (
        "Not saving checkpoint 'model_0000002.pth': 1 tensor(s) of the model hold NaN or inf "
        "(roi_heads.box_predictor.cls_score.weight); the last checkpoint is {!r}.".format(
            str(tmp_path / "model_0000001.pth")
        )
    )
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


# -------------------------------------------------------------------------------------------------
# Training: a diverging run, --resume with other solver values
# -------------------------------------------------------------------------------------------------
class _NaNWeights(HookBase):
    """Makes the model's weights NaN at the end of iteration ``at``."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                for p in self.trainer.model.parameters():
                    p.fill_(float("nan"))


def _train(train_net, out, *opts, resume=False):
    argv = ["--config-file", SMOKE] + ["--resume"] * resume
    argv += ["OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    argv += ["DATASETS.TRAIN", "('{}_val',)".format(PREFIX), "DATASETS.TEST", "()"]
    return train_net.main(default_argument_parser().parse_args(argv + [str(o) for o in opts]))


@pytest.mark.parametrize("first", [False, True])
def test_diverging_run(train_net, datasets, tmp_path, monkeypatch, first):
    # the smoke schedule saves model_0000002.pth at the end of iteration 2; the weights become
    # NaN at the end of iteration 2 after that save (the loss of iteration 3 is NaN), or before
    # it (first: the save is refused)
    def build_hooks(self):
        hooks = PANetTrainer.build_hooks(self)
        return [_NaNWeights(2)] + hooks if first else hooks + [_NaNWeights(2)]

    monkeypatch.setattr(train_net.Trainer, "build_hooks", build_hooks)
    with pytest.raises(FloatingPointError) as e:
        _train(train_net, tmp_path)
    assert isinstance(e.value, TrainingDivergedError)
    msg = str(e.value)
    assert "\n" not in msg
    if first:
        assert msg.startswith(
            "Training diverged at iteration 2: Not saving checkpoint 'model_0000002"
        )
        assert msg.endswith(
            "The last checkpoint written before it: none. Try a lower SOLVER.BASE_LR, a longer "
            "SOLVER.WARMUP_ITERS or SOLVER.CLIP_GRADIENTS.ENABLED True."
        )
        assert not os.path.exists(tmp_path / "last_checkpoint")
        assert not any(n.endswith(".pth") for n in os.listdir(tmp_path))
    else:
        last = str(tmp_path / "model_0000002.pth")
        # Detectron2's FloatingPointError of the NaN boxes (in the forward pass, before a loss)
        assert msg.startswith(
            "Training diverged at iteration 3: Predicted boxes or scores contain Inf/NaN. Training "
            "has diverged (the last total_loss: "
        ), msg
        assert (
            "The last checkpoint written before it: {!r} (named by last_checkpoint)".format(last)
            in msg
        )
        assert e.value.last_checkpoint == last
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
        weights = torch.load(last, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback" not in log
    what = "TrainingDivergedError" if first else "FloatingPointError"
    assert "Exception during training: {}: ".format(what) in log


def test_resume_with_other_solver_values(train_net, datasets, tmp_path):
    _train(train_net, tmp_path, "SOLVER.MAX_ITER", 2)  # model_final.pth at iteration 1
    _train(
        train_net,
        tmp_path,
        "SOLVER.MAX_ITER",
        3,
        "SOLVER.BASE_LR",
        0.02,
        "SOLVER.WEIGHT_DECAY",
        0.0002,
        resume=True,
    )
    log = (tmp_path / "log.txt").read_text().splitlines()
    lines = [line.split("]: ", 1)[-1].split(": ", 1)[-1] for line in log if ": --resume: " in line]
    lines = [line if line.startswith("--resume") else "--resume: " + line for line in lines]
    assert lines == [
        "--resume: SOLVER.BASE_LR is 0.02 in the config, 0.01 in the checkpoint "
        "'model_final.pth': the run uses the config's 0.02 (from iteration 2).",
        "--resume: SOLVER.WEIGHT_DECAY is 0.0002 in the config, 0.0001 in the checkpoint "
        "'model_final.pth': the run uses the config's 0.0002 (from iteration 2).",
    ]
    state = torch.load(str(tmp_path / "model_final.pth"), weights_only=True)["trainer"]
    assert state["hooks"]["LRScheduler"]["base_lrs"] == [0.02, 0.02]
    groups = state["_trainer"]["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.02, 0.02]
    assert groups[0]["weight_decay"] == 0.0002  # the other group: SOLVER.WEIGHT_DECAY_NORM 0


# -------------------------------------------------------------------------------------------------
# tools/export_model.py: the CPU where CUDA is absent, one line for a LazyConfig syntax error
# -------------------------------------------------------------------------------------------------
def test_export_tool_lines(tmp_path):
    tool = load_script("tools/export_model.py", "export_model_i17")
    config = os.path.join(ROOT, "configs", INSTANCE)
    args = tool.get_parser().parse_args(["--config-file", config, "--output", str(tmp_path)])
    cfg = tool.setup_cfg(args)
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    broken = tmp_path / "broken_lazy.py"
    broken.write_text("model = dict(\ntrain = 1\n")
    line = error_exit(tool.cli, ["--config-file", str(broken), "--output", str(tmp_path / "o")])
    assert line.startswith("ERROR: Config file {}:1: SyntaxError: ".format(broken))
    line = error_exit(tool.cli, ["--config-file", config, "--output", str(tmp_path / "o")])
    assert line.startswith("ERROR: No checkpoint given (MODEL.WEIGHTS")


def test_url_that_cannot_be_downloaded():
    """An offline machine (the COCO configs' detectron2:// ImageNet weights): one line, warm start
    or not (was urllib's URLError traceback). Port 9 of this machine refuses connections."""
    model = _model(seed=1)
    for warm_start in (True, False):
        assert _error(model, "http://127.0.0.1:9/model.pth", warm_start=warm_start) == (
            "Cannot read checkpoint 'http://127.0.0.1:9/model.pth': [Errno 111] Connection "
            "refused. Download it where the network reaches, give the local file."
        )


def test_files_without_a_model_state_dict(tmp_path):
    """What is inside is named (issue 25: "found dict" named the outer type)."""
    model = _model(seed=1)
    cases = [
        ("list.pth", {"model": [1, 2]}, "(its 'model' is a list, not a dict of tensors)."),
        ("blobs.pkl", {"blobs": [1, 2]}, "(its 'blobs' is a list, not a dict of arrays)."),
        ("tuple.pkl", (1, 2), "holds a tuple, not a dict of arrays."),
        # a torch file of another object (Detectron2 looks for "model" in it: a TypeError)
        ("int.pth", 5, "holds no model state dict (a int, not a dict of tensors)."),
        (
            "tensor.pth",
            torch.ones(3),
            "holds no model state dict (a Tensor, not a dict of tensors).",
        ),
        ("a_list.pth", [1, 2], "holds no model state dict (a list, not a dict of tensors)."),
    ]
    for name, content, expected in cases:
        path = str(tmp_path / name)
        if name.endswith(".pth"):
            torch.save(content, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(content, f)
        msg = _error(model, path)
        assert msg.startswith("Checkpoint {!r} ".format(path)) and msg.endswith(expected), msg
    path = _save(tmp_path, "text.pth", {"backbone.x": "not a tensor"})
    assert _error(model, path) == (
        "Checkpoint {!r} was not loaded: its model state holds a str as 'backbone.x', not a "
        "tensor or array.".format(path)
    )


# -------------------------------------------------------------------------------------------------
# A full disk while a checkpoint is saved
# -------------------------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile(FileProxy):
    """A file whose buffered bytes do not fit on the disk: ``close`` fails with ENOSPC."""

    def close(self):
        self._f.close()
        _no_space()


@pytest.mark.parametrize("where", ["write", "close", "tag"])
def test_full_disk_while_saving(tmp_path, monkeypatch, where):
    model = torch.nn.Linear(3, 2)
    checkpointer = PANetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = {n: (tmp_path / n).read_bytes() for n in ("model_final.pth", "last_checkpoint")}
    torch.nn.init.constant_(model.weight, 1.0)
    if where == "write":  # fails after some bytes were written

        def save(obj, f):
            f.write(b"partial bytes")
            _no_space()

        monkeypatch.setattr(torch, "save", save)
    else:
        open_ = PathManager.open
        target = "model_final.pth" if where == "close" else "last_checkpoint"

        def open_full(path, mode="r", **kwargs):
            f = open_(path, mode, **kwargs)
            return _FullDiskFile(f) if "w" in mode and target in path else f

        monkeypatch.setattr(PathManager, "open", open_full)
    with pytest.raises(CheckpointError) as e:
        checkpointer.save("model_final")
    expected = "Cannot save checkpoint {!r}: No space left on device (the previous checkpoint is "
    expected += "intact: last_checkpoint names 'model_final.pth')."
    assert str(e.value) == expected.format(str(tmp_path / "model_final.pth"))
    monkeypatch.undo()
    after = {n: (tmp_path / n).read_bytes() for n in before}
    if where == "tag":  # the checkpoint was saved; its tag still names the same file
        assert after["last_checkpoint"] == before["last_checkpoint"]
    else:
        assert after == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no partial
    PANetCheckpointer(torch.nn.Linear(3, 2), str(tmp_path)).load(str(tmp_path / "model_final.pth"))
