# -*- coding: utf-8 -*-
"""
Hostile inputs (issue 25), each through what a user runs: checkpoints whose values are no
weights (integers or bool for floats, NaN / inf) refused by train_net.py --eval-only, demo.py and
tools/export_model.py (in-process, their one ERROR line); files that would allocate far more
than their own size (resident memory of a fresh process reading them) or hold NumPy arrays that
are not plain numbers; annotations with non-finite or absurd coordinates and RLE masks of
another size, dropped by the training loader and the evaluator's ground truth before
pycocotools sees them; an image of an extreme aspect ratio; a panoptic ground truth whose PNG
and JSON disagree, warned of by the evaluator as training warns. Small R-18 models, CPU.
"""

import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("detectron2")

import pycocotools.mask as mask_util  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from panet_d2 import PANetCheckpointer  # noqa: E402
from panet_d2.checkpoint import _PLAIN_DTYPES, read_checkpoint  # noqa: E402
from panet_d2.data import register_synthetic_dataset  # noqa: E402
from panet_d2.data.image_io import ImageDatasetMapper, read_image  # noqa: E402
from panet_d2.engine import PANetTrainer  # noqa: E402
from panet_d2.errors import CheckpointError, ImageLoadError, NonFiniteOutputError  # noqa: E402
from panet_d2.evaluation import PanopticEvaluator  # noqa: E402

from .common import (  # noqa: E402
    ROOT,
    error_exit,
    load_script,
    panet_cfg,
    panoptic_ids,
    random_image,
)

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE = "quick_schedules/panet_R_18_synth_instance.yaml"
SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PREFIX = "t_hostile"
CLS = "roi_heads.box_predictor.cls_score.weight"
STEM = "backbone.bottom_up.stem.conv1.weight"
PANOPTIC = "quick_schedules/panoptic_panet_R_18_synth.yaml"
BOX_OUTPUTS = "The box predictor's scores and box deltas"
N = 1_500_000_000  # the bytes a hostile file asks for


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(panet_cfg(INSTANCE, opts=list(opts)))


@pytest.fixture(scope="module")
def state():
    return {k: v.clone() for k, v in _model().state_dict().items()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hostile_data"))
    register_synthetic_dataset(PREFIX, root=root, splits={"val": {"num_images": 2, "seed": 4}})
    return PREFIX + "_val"


def _save(tmp_path, name, state, **changes):
    path = str(tmp_path / name)
    torch.save({"model": dict(state, **changes)}, path)
    return path


def _files(folder):
    return [f for _, _, names in os.walk(folder) for f in names]


def _refused(model, path, **kwargs):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        PANetCheckpointer(model, **kwargs).load(path)
    assert "\n" not in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # as it was
    return str(e.value)


# -------------------------------------------------------------------------------------------------
# Weights that are no weights: integers or bool for floats, NaN / inf
# -------------------------------------------------------------------------------------------------
def test_integer_and_bool_weights_are_refused(state, tmp_path):
    model = _model(seed=1)
    for dtype in (torch.int64, torch.bool):
        path = _save(tmp_path, f"{dtype}.pth", state, **{CLS: state[CLS].to(dtype)})
        for warm_start in (False, True):
            assert _refused(model, path, warm_start=warm_start) == (
                f"Checkpoint {path!r} was not loaded: its tensor {CLS!r} is {dtype} where the "
                "model's is torch.float32: weights are floating point (a file whose weights were "
                "cast to integers or bool is damaged; give the float one)."
            )
    # a Detectron2 .pkl: NumPy arrays
    pkl = str(tmp_path / "int.pkl")
    arrays = {k: v.numpy() for k, v in state.items()}
    arrays[CLS] = arrays[CLS].astype(np.int64)
    with open(pkl, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    assert f"its tensor {CLS!r} is torch.int64 where" in _refused(model, pkl)
    # the single-level fc1 of a file without AFP, which an AFP layer takes (warm start)
    single = _model("MODEL.AFP.ENABLED", False).state_dict()
    fc1 = "roi_heads.box_head.fc1.weight"
    path = _save(tmp_path, "no_afp.pth", single, **{fc1: single[fc1].to(torch.int32)})
    assert f"its tensor {fc1!r} is torch.int32 where" in _refused(model, path, warm_start=True)
    # another float dtype is a cast, as Detectron2 makes it
    path = _save(tmp_path, "half.pth", state, **{CLS: state[CLS].half()})
    PANetCheckpointer(model).load(path)
    assert torch.equal(model.state_dict()[CLS], state[CLS].half().float())


def test_non_finite_weights_are_refused(state, tmp_path):
    model = _model(seed=1)
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 3)
    bad = state[first].clone()
    bad.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    path = _save(tmp_path, "nan.pth", state, **{first: bad, CLS: state[CLS] * float("nan")})
    for warm_start in (False, True):
        assert _refused(model, path, warm_start=warm_start) == (
            f"Checkpoint {path!r} was not loaded: its weights hold NaN or inf: {first} has 3 of "
            f"{bad.numel()} values not finite (2 tensor(s) in all): the weights of a diverged or "
            "damaged run; give an earlier checkpoint."
        )
    # a float16 copy whose values overflowed float16's 65504 (BN's running_var, e.g.)
    big = state[first].clone()
    big.view(-1)[:2] = 1e5
    path = _save(tmp_path, "half_overflow.pth", state, **{first: big.half()})
    assert _refused(model, path) == (
        f"Checkpoint {path!r} was not loaded: its weights hold NaN or inf: {first} has 2 of "
        f"{bad.numel()} values not finite (1 tensor(s) in all): stored as float16, whose largest "
        "value is 65504, beyond which they became inf: save the checkpoint in float32."
    )
    # a warm start of AFP's per-level layers from single-level ones (no file tensor of that name)
    from panet_d2.config import PER_LEVEL_NAME

    singles = {PER_LEVEL_NAME.sub(r"\1", k): v for k, v in state.items()}
    fc1 = next(k for k in singles if "box_head.fc1" in k and k.endswith("weight"))
    nan = singles[fc1].clone()
    nan.view(-1)[:2] = float("nan")
    path = _save(tmp_path, "single_nan.pth", singles, **{fc1: nan})
    assert "values not finite" in _refused(model, path, warm_start=True)
    # a warm start to 2 classes does not load the 3-class predictors: their NaN do not matter
    path = _save(tmp_path, "nan_predictor.pth", state, **{CLS: state[CLS] * float("nan")})
    two = _model("MODEL.ROI_HEADS.NUM_CLASSES", 2, seed=1)
    assert "3 classes in the file" in _refused(two, path)
    PANetCheckpointer(two, warm_start=True).load(path)
    assert all(v.isfinite().all() for v in two.state_dict().values() if v.is_floating_point())


def test_entry_points_refuse_weights_that_are_no_weights(train_net, state, tmp_path):
    """train_net.py --eval-only, demo.py, tools/export_model.py: one line, nothing evaluated,
    drawn or exported."""
    nan = _save(tmp_path, "nan.pth", state, **{CLS: state[CLS] * float("nan")})
    ints = _save(tmp_path, "int.pth", state, **{CLS: state[CLS].to(torch.int64)})
    big = _save(tmp_path, "overflow.pth", _overflowing(state, STEM))  # finite, outputs not
    out = tmp_path / "eval"
    argv = ["--config-file", SMOKE, "--eval-only", "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"]
    for path, expected in [(nan, "its weights hold NaN or inf: "), (ints, "torch.int64 where")]:
        args = default_argument_parser().parse_args(argv + ["MODEL.WEIGHTS", path])
        with pytest.raises(CheckpointError) as e:
            train_net.main(args)
        assert str(e.value).startswith(f"Checkpoint {path!r} was not loaded: ")
        assert expected in str(e.value)
    args = default_argument_parser().parse_args(argv + ["MODEL.WEIGHTS", big])
    with pytest.raises(NonFiniteOutputError, match="^The backbone's features p2 hold NaN or inf"):
        train_net.main(args)
    assert not _files(out / "inference")  # nothing evaluated
    config = os.path.join(ROOT, "configs", INSTANCE)
    image = os.path.join(ROOT, "assets", "demo_images")
    demo = load_script("demo.py", "panet_demo_hostile")
    argv = ["--config-file", config, "--input", image, "--output", str(tmp_path / "vis")]
    line = error_exit(demo.main, argv + ["--opts", "MODEL.WEIGHTS", ints])
    assert line.startswith(f"ERROR: Checkpoint {ints!r} was not loaded: its tensor {CLS!r}")
    assert not _files(tmp_path / "vis")  # nothing drawn
    export = load_script("tools/export_model.py", "export_model_hostile")
    argv = ["--config-file", config, "--output", str(tmp_path / "export"), "MODEL.WEIGHTS", nan]
    line = error_exit(export.cli, argv)
    assert line.startswith(f"ERROR: Checkpoint {nan!r} was not loaded: its weights hold NaN")
    assert not _files(tmp_path / "export")  # nothing exported
    # finite weights that overflow: nothing drawn or exported either
    overflow = "ERROR: The backbone's features p2 hold NaN or inf ("
    argv = ["--config-file", config, "--input", image, "--output", str(tmp_path / "vis")]
    assert error_exit(demo.main, argv + ["--opts", "MODEL.WEIGHTS", big]).startswith(overflow)
    assert not _files(tmp_path / "vis")
    for how in (
        ["--export-method", "tracing"],
        ["--export-method", "scripting"],
        ["--format", "onnx"],
    ):
        argv = ["--config-file", config, "--output", str(tmp_path / "export"), "MODEL.WEIGHTS"]
        line = error_exit(export.cli, how + argv + [big])
        assert line.startswith(overflow) and not _files(tmp_path / "export")


def _overflowing(state, key):
    """``state`` with ``key`` scaled to float32's largest values: finite, its products not."""
    return dict(state, **{key: state[key] / state[key].abs().max() * 3e38})


@pytest.mark.parametrize(
    "config, key, part",
    [
        (INSTANCE, STEM, "The backbone's features p2"),
        (
            INSTANCE,
            "proposal_generator.rpn_head.objectness_logits.weight",
            "The RPN's objectness logits",
        ),
        (PANOPTIC, "proposal_generator.rpn_head.anchor_deltas.weight", "The RPN's anchor deltas"),
        (INSTANCE, CLS, BOX_OUTPUTS),
        (INSTANCE, "roi_heads.box_predictor.bbox_pred.weight", BOX_OUTPUTS),
        (INSTANCE, "roi_heads.mask_head.predictor.weight", "The mask head's logits"),
        (PANOPTIC, "sem_seg_head.predictor.weight", "The semantic head's logits"),
    ],
)
def test_weights_that_overflow_give_no_outputs(config, key, part):
    """Finite weights whose outputs are NaN or inf: refused, where Detectron2's inference drops
    such boxes and returns nothing (an empty result, scored 0); not while traced or training."""
    torch.manual_seed(0)
    cfg = panet_cfg(config)
    model = build_model(cfg).eval()
    model.load_state_dict(_overflowing(model.state_dict(), key))
    with torch.no_grad(), pytest.raises(NonFiniteOutputError) as e:
        model([{"image": random_image()}])
    assert str(e.value).startswith(part + " hold NaN or inf (")
    if key == STEM:  # a traced graph holds no Python check: tracing does not run it
        with torch.no_grad():
            torch.jit.trace(model.backbone, random_image()[None], strict=False, check_trace=False)
    model.train()  # training: the losses' own check (Detectron2's "Loss became infinite or NaN")
    features = model.backbone(random_image()[None])["p2"]  # not refused
    assert features.isfinite().all() == (key != STEM)
    if key.startswith("roi_heads.mask_head."):
        size = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        head = model.roi_heads.mask_head  # AFP: (M, levels, C, size, size) grids
        grids = torch.rand(2, head.num_levels, cfg.MODEL.FPN.OUT_CHANNELS, size, size)
        assert not head.layers(grids).isfinite().all()  # not refused


# -------------------------------------------------------------------------------------------------
# Files that would allocate beyond their size: refused before allocating (resident memory)
# -------------------------------------------------------------------------------------------------
def _zip_pth(path, data_pkl):
    """A torch zip checkpoint (as torch.save writes one) whose data.pkl is ``data_pkl``."""
    torch.save({"w": torch.ones(4)}, path + ".src")
    with zipfile.ZipFile(path + ".src") as src, zipfile.ZipFile(path, "w") as out:
        for name in src.namelist():
            if not name.endswith("data.pkl"):
                out.writestr(name, src.read(name))
            elif callable(data_pkl):  # written in parts, deflated: a small file, a large member
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with out.open(info, "w", force_zip64=True) as f:
                    data_pkl(f)
            else:
                out.writestr(name, data_pkl)
    os.remove(path + ".src")


def _nested_tuples(levels):
    """A pickle of {t: 1}, t nested ``levels`` deep of (t', t'): hashing t takes 2**levels."""
    data = b"\x80\x02K\x01\x85"
    for _ in range(levels):
        data += b"q\x00h\x00\x86"  # BINPUT 0, BINGET 0, TUPLE2
    return data + b"q\x01}q\x02h\x01K\x01s."


def _write_text_bomb(f, n=200_000_000):
    f.write(b"\x80\x02X" + struct.pack("<I", n))
    chunk = b"a" * 10_000_000
    for _ in range(n // len(chunk)):
        f.write(chunk)
    f.write(b".")


_MEASURE = r"""
import json, sys, time
from panet_d2.checkpoint import read_checkpoint
from panet_d2.errors import CheckpointError

def status(key):  # MiB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(key))

def growth(call):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident memory (VmHWM) from now on
    before, start = status("VmRSS"), time.time()
    line = call()
    return dict(line=line, grew=status("VmHWM") - before, seconds=time.time() - start)

def read(path):
    try:
        read_checkpoint(path)
    except CheckpointError as e:
        return str(e)

results = {path: growth(lambda: read(path)) for path in sys.argv[1:]}
results["control"] = growth(lambda: len(bytearray(300 * 2**20)))  # the measure sees allocations
print(json.dumps(results))
"""


def test_files_cannot_allocate_beyond_their_size(tmp_path):
    try:  # Linux: the peak resident memory can be reset, and measured for each file
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("no /proc/self/clear_refs to reset the peak resident memory")
    # {"model": bytearray(N)}, as torch.save and pickle.dump write it (protocol 2)
    call = b"c__builtin__\nbytearray\nJ" + struct.pack("<i", N) + b"\x85R"
    bytearray_call = b"\x80\x02}X\x05\x00\x00\x00model" + call + b"s."
    files = {
        "bytearray.pkl": bytearray_call,  # 45 bytes, as the 95-byte file
        "bytes.pkl": bytearray_call.replace(b"bytearray", b"bytes"),
        "bytearray8.pkl": b"\x80\x05\x96" + struct.pack("<Q", N) + b".",  # protocol 5 opcode
        "tuples.pkl": _nested_tuples(64),  # hashing would not end
        "legacy.pth": bytearray_call.replace(b"__builtin__", b"builtins"),  # torch's old format
    }
    paths = {}
    for name, data in files.items():
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as f:
            f.write(data)
    for name, data in [
        ("bytearray.pth", files["legacy.pth"]),
        ("tensor.pth", bytearray_call.replace(b"c__builtin__\nbytearray", b"ctorch\nFloatTensor")),
        ("tuples.pth", _nested_tuples(64)),
        ("zip_bomb.pth", _write_text_bomb),  # 200 MB of data.pkl, deflated to 0.2 MB
    ]:
        paths[name] = str(tmp_path / name)
        _zip_pth(paths[name], data)
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *paths.values()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("control")["grew"] >= 250  # the measure sees allocations
    for name, path in paths.items():
        r = results[path]
        assert r["line"] and r["line"].startswith(f"Checkpoint {path!r} was not loaded: "), r
        assert "\n" not in r["line"] and r["grew"] < 50 and r["seconds"] < 5, (name, r)
    size = os.path.getsize(paths["bytearray.pkl"])
    assert results[paths["bytearray.pkl"]]["line"].startswith(
        f"Checkpoint {paths['bytearray.pkl']!r} was not loaded: it makes a bytearray of {N} "
        f"bytes, more than the file's own {size} bytes. panet_d2 reads tensors, NumPy arrays of "
        "bool, integer and float dtypes, numbers, strings and containers, none larger than the "
        "file."
    )
    assert "its 7 zip members declare 200000" in results[paths["zip_bomb.pth"]]["line"]
    for name in ("tuples.pkl", "tuples.pth"):
        assert "tuples nested to 2097151 items (hashing them would not end)" in (
            results[paths[name]]["line"]
        )


def _dtype_pickle(dtype, state=None):
    """A pickle of {"model": {"a": array}} with the array's dtype ``dtype`` (a NumPy dtype string)
    and, if given, the dtype's state (NumPy's: (3, "<", None, None, None, -1, -1, 0))."""
    data = pickle.dumps({"model": {"a": np.zeros(2, dtype="f4")}}, protocol=2)
    data = data.replace(b"X\x02\x00\x00\x00f4", b"X" + struct.pack("<I", len(dtype)) + dtype)
    if state is not None:
        plain = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"
        assert plain in data
        data = data.replace(plain, state)
    return data


@pytest.mark.parametrize(
    "data, found",
    [
        (pickle.dumps({"a": np.array([1, "x"], dtype=object)}), "the NumPy dtype 'O8' (object)"),
        (pickle.dumps({"a": np.zeros(2, dtype="V8")}), "the NumPy dtype 'V8' (void / structured)"),
        (pickle.dumps({"a": np.zeros(2, dtype=[("x", "f4")])}), "the NumPy dtype 'V4'"),
        (pickle.dumps({"a": np.zeros(2, dtype="c8")}), "the NumPy dtype 'c8' (complex)"),
        (pickle.dumps({"a": np.zeros(2, dtype="M8[s]")}), "the NumPy dtype 'M8'"),
        (pickle.dumps({"a": np.zeros(2, dtype="U3")}), "the NumPy dtype 'U3' (string)"),
        # a plain dtype whose state sets an element size and flags: arrays read beyond their data
        (
            _dtype_pickle(b"f4", b"J\x00\x00\x00\x40J\xff\xff\xff\xffK\x3f"),
            "a NumPy dtype with another state ((3, '<', None, None, None, 1073741824, -1, 63))",
        ),
        (_dtype_pickle(b"O8"), "the NumPy dtype 'O8' (object)"),
        (_dtype_pickle(b"f4", b"J\xff\xff\xff\xffJ\x00\x00\x00\x40K\x00"), "a NumPy dtype with"),
    ],
)
def test_numpy_arrays_that_are_not_plain_numbers(tmp_path, data, found):
    path = str(tmp_path / "arrays.pkl")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"Checkpoint {path!r} was not loaded: it holds {found}"), msg
    assert "\n" not in msg


def _torch_data_pkl(old, new):
    """The data.pkl of torch.save({"w": torch.ones(4)}) with the bytes ``old`` made ``new``."""
    torch.save({"w": torch.ones(4)}, io.BytesIO())  # (the same pickle, whatever the archive)
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buffer)
    with zipfile.ZipFile(buffer) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert data.count(old) == 1
    return data.replace(old, new)


_FLOATS3 = pickle.dumps(np.zeros(4, "f4"), protocol=3)
_BIG = b"J\xff\xff\xff\x7f"  # BININT 2**31 - 1


@pytest.mark.parametrize(
    "name, data, found",
    [
        # NumPy's pickles, otherwise: an array allocated by its shape, data of another length,
        # ndarray called itself, a scalar of other data
        (
            "shape.pkl",
            b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + _BIG
            + b"\x85C\x01b\x87R.",
            "it makes a NumPy array another way than NumPy pickles one",
        ),
        (
            "length.pkl",
            _FLOATS3.replace(b"C\x10" + b"\x00" * 16, b"C\x08" + b"\x00" * 8),
            "its data do not make the (4,) float32 array it declares",
        ),
        ("ndarray.pkl", b"\x80\x02cnumpy\nndarray\nK\x03\x85R.", "it calls numpy.ndarray itself"),
        (
            "scalar.pkl",
            pickle.dumps(np.float32(1.5), protocol=3).replace(b"C\x04\x00\x00\xc0?", b"C\x01?"),
            "it makes a NumPy float32 scalar from other data",
        ),
        # Python objects no checkpoint holds: a class instance, a state, str() of a container
        # (of shared lists it grows without end), text in a codec that is not text
        ("newobj.pkl", b"\x80\x02ccollections\nOrderedDict\n)\x81.", "it creates a class"),
        ("build.pkl", b"\x80\x02]}b.", "it sets the state of a list"),
        ("str.pkl", b"\x80\x02cbuiltins\nstr\n]\x85R.", "it calls str(list), which no"),
        (
            "codec.pkl",
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.",
            "it calls _codecs.encode(str, 'rot13')",
        ),
        # torch: a storage declared larger than the file, a tensor rebuilt as a view of 4.6e18
        (
            "storage.pth",
            _torch_data_pkl(b"K\x04t", _BIG + b"t"),
            "it declares a storage of 2147483647 elements, more than the file's own",
        ),
        (
            "view.pth",
            _torch_data_pkl(b"K\x04\x85", _BIG + _BIG + b"\x86").replace(
                b"K\x01\x85", b"K\x00K\x00\x86"
            ),
            "it makes a torch._utils._rebuild_tensor_v2 of 576460751766552576 elements or bytes",
        ),
    ],
)
def test_pickle_constructs_no_checkpoint_holds(tmp_path, name, data, found):
    path = str(tmp_path / name)
    if name.endswith(".pth"):
        _zip_pth(path, data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value).startswith(f"Checkpoint {path!r} was not loaded: {found}"), str(e.value)


def test_plain_numpy_arrays_load(tmp_path):
    arrays = {t: np.arange(6).astype(t).reshape(2, 3) for t in sorted(_PLAIN_DTYPES)}
    arrays["big-endian"] = np.arange(3, dtype=">f4")
    arrays["fortran"] = np.asfortranarray(np.arange(6, dtype="f8").reshape(2, 3))
    for protocol in (2, 5):
        path = str(tmp_path / f"plain_{protocol}.pkl")
        with open(path, "wb") as f:
            pickle.dump(arrays, f, protocol=protocol)
        loaded = read_checkpoint(path)
        for k, v in arrays.items():  # (NumPy's protocol-2 pickles make arrays native)
            assert loaded[k].dtype.newbyteorder("=") == v.dtype.newbyteorder("="), k
            assert np.array_equal(loaded[k], v), k


# -------------------------------------------------------------------------------------------------
# Annotations pycocotools cannot take: dropped by the training loader and the evaluator
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_annotations(synth, tmp_path_factory):
    """The generated validation split with a NaN, a 1e8, an infinite box and an RLE of another
    size; returns (dataset name, the ids of those annotations)."""
    meta = MetadataCatalog.get(synth)
    with open(meta.json_file) as f:
        data = json.load(f)
    annos = data["annotations"]
    polygon = [10.0, 10.0, 40.0, 10.0, 40.0, 40.0]
    changes = [
        dict(segmentation=[polygon[:3] + [float("nan")] + polygon[4:]]),
        dict(segmentation=[polygon[:3] + [1e8] + polygon[4:]]),
        dict(bbox=[1.0, 2.0, float("inf"), 3.0]),
        dict(segmentation=dict(annos[3]["segmentation"], size=[7, 9])),
    ]
    for a, change in zip(annos, changes):
        a.update(change)
    path = tmp_path_factory.mktemp("hostile_json") / "instances.json"
    path.write_text(json.dumps(data))  # NaN and Infinity: what Python's json reads back
    name = PREFIX + "_hostile_annotations"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), meta.image_root)
    return name, [a["id"] for a in annos[:4]], len(annos)


def test_training_and_evaluation_drop_unusable_annotations(hostile_annotations, caplog):
    name, bad, total = hostile_annotations
    cfg = panet_cfg(INSTANCE, opts=["DATASETS.TRAIN", (name,), "SOLVER.IMS_PER_BATCH", 2])
    cfg.DATALOADER.NUM_WORKERS = 0
    with caplog.at_level(logging.WARNING, logger="panet_d2.engine.checks"):
        loader = PANetTrainer.build_train_loader(types.SimpleNamespace(), cfg)
    reasons = (
        "(3 with a coordinate not finite or beyond 4x the image size, 1 with an RLE mask of "
        "another size than its image)"
    )
    assert [r.getMessage() for r in caplog.records if reasons in r.getMessage()], caplog.text
    batch = next(iter(loader))  # the mapper and pycocotools on what is left
    assert all(torch.isfinite(d["instances"].gt_boxes.tensor).all() for d in batch)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panet_d2.engine.checks"):
        evaluator = PANetTrainer.build_evaluator(cfg, name)
    coco = evaluator._coco_api
    assert set(bad).isdisjoint(coco.anns) and len(coco.anns) == total - 4
    assert f"dropped 4 of {total} annotations {reasons}" in caplog.text
    for a in coco.anns.values():
        mask_util.decode(coco.annToRLE(a))  # pycocotools reads every annotation left


# -------------------------------------------------------------------------------------------------
# An image of an extreme aspect ratio; a panoptic ground truth whose PNG and JSON disagree
# -------------------------------------------------------------------------------------------------
def test_extreme_aspect_ratio_image(tmp_path):
    wide = str(tmp_path / "wide.png")
    Image.fromarray(np.zeros((20, 20000, 3), dtype=np.uint8)).save(wide)
    with pytest.raises(ImageLoadError) as e:
        read_image(wide, "BGR", what="input image")
    assert str(e.value) == (
        f"Input image {wide!r} is 20000x20 (width x height): panet_d2 reads images whose longest "
        "side is at most 100 times the shortest (resized to the model's input sizes, this one "
        "would be a few pixels across or none): crop it or cut it into parts."
    )
    # within the ratio, but resized to none by the config's sizes: one line as well
    long = str(tmp_path / "long.png")
    Image.fromarray(np.zeros((20, 1900, 3), dtype=np.uint8)).save(long)
    cfg = panet_cfg(INSTANCE, opts=["INPUT.MAX_SIZE_TEST", 40])
    record = {"file_name": long, "height": 20, "width": 1900, "image_id": 1}
    with pytest.raises(ImageLoadError) as e:
        ImageDatasetMapper(cfg, False)(record)
    assert str(e.value).startswith(
        f"Image {long!r} (1900x20, width x height) cannot be augmented as the config says "
        "(INPUT.MIN_SIZE_* / MAX_SIZE_*, crops): ValueError: height and width must be > 0"
    )


def _panoptic_mismatch(synth, tmp_path):
    """The generated panoptic validation split registered with a JSON whose first image lists
    one segment less (the PNG has it) and whose second lists one more (id 999999)."""
    meta = MetadataCatalog.get(synth + "_panoptic")
    root = meta.panoptic_root  # generates the split
    with open(meta.panoptic_json) as f:
        data = json.load(f)
    first, second = data["annotations"][:2]
    dropped = first["segments_info"].pop()["id"]
    second["segments_info"].append(dict(second["segments_info"][0], id=999999))
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))
    name = PREFIX + "_panoptic_mismatch"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    metadata = dict(meta.as_dict(), panoptic_root=root, panoptic_json=str(path))
    MetadataCatalog.get(name).set(**{k: v for k, v in metadata.items() if k != "name"})
    return name, root, first, second, dropped


def test_panoptic_evaluation_warns_as_training(synth, tmp_path, caplog):
    name, root, first, second, dropped = _panoptic_mismatch(synth, tmp_path)
    evaluator = PanopticEvaluator(name)
    evaluator.reset()
    for a in (first, second):  # an empty prediction of each image: PQ 0, as it is
        seg = torch.zeros(panoptic_ids(os.path.join(root, a["file_name"])).shape, dtype=torch.int32)
        inputs = [{"image_id": a["image_id"], "file_name": a["file_name"][:-4] + ".jpg"}]
        evaluator.process(inputs, [{"panoptic_seg": (seg, [])}])
    with caplog.at_level(logging.WARNING, logger="panet_d2.data.panoptic_mapper"):
        results = evaluator.evaluate()
    assert results["panoptic_seg"]["PQ"] == 0.0
    where = "image {!r} ({})".format
    assert [
        r.getMessage() for r in caplog.records if r.name == "panet_d2.data.panoptic_mapper"
    ] == [
        f"{where(first['image_id'], os.path.join(root, first['file_name']))}: PNG segment id(s) "
        f"[{dropped}] not in segments_info: neither ground truth nor void for PQ (predictions "
        "there count as false positives)",
        f"{where(second['image_id'], os.path.join(root, second['file_name']))}: segment id(s) "
        "[999999] of segments_info are not in the PNG: PQ counts them as missed",
    ]
