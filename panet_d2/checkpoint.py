"""Detectron2's checkpointer that reads files as data, never code, nor larger than the file,
verifies what it loaded and saves atomically. Why, and every message: docs/reliability.md."""

import builtins
import codecs
import io
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from unittest import mock

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager

from .compat import _AtomicFile, atomic_output_files
from .config import PER_LEVEL_NAME
from .errors import CheckpointError, TrainingDivergedError, os_error_cause

__all__ = ["PANetCheckpointer", "RestrictedUnpickler", "read_checkpoint"]

logger = logging.getLogger(__name__)

# Tensors of the model a file need not hold (a counter, the config's pixel normalisation).
NOT_REQUIRED_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")
# Class-dependent tensors (a warm start may start them new): key prefix -> (config key, the classes
# of a tensor of n rows, None where n says nothing).
_ROI, _SEM = "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
CLASS_KEYS = {
    "roi_heads.box_predictor.cls_score.": (_ROI, lambda n: n - 1),
    "roi_heads.box_predictor.bbox_pred.": (_ROI, lambda n: n // 4 if n > 4 else None),
    "roi_heads.mask_head.predictor.": (_ROI, lambda n: n if n > 1 else None),
    "sem_seg_head.predictor.": (_SEM, lambda n: n),
}
# What mismatched keys mean: (where, key part, what the file has: what to set). "missing": a tensor
# of the model with that part is not in the file, which has none; "unexpected": the file has one,
# the model none; "single": a per-level tensor is missing, the file has its single-level version;
# "position": the file has one, the model none of that part but per-level tensors elsewhere.
# fmt: off
_HINTS = (
    ("unexpected", ".per_level.", "AFP per-level weights: set MODEL.AFP.ENABLED True (with "
     "MODEL.AFP.BOX_FUSE_POSITION / MASK_FUSE_POSITION after_first_layer, their default)"),
    ("position", "box_head.fc1.per_level.", "a box fc1 per level: set MODEL.AFP.BOX_FUSE_POSITION "
     "after_first_layer"),
    ("position", "mask_head.mask_fcn1.per_level.", "a mask conv1 per level: set "
     "MODEL.AFP.MASK_FUSE_POSITION after_first_layer"),
    ("single", ".per_level.", "single-level box fc1 / mask conv1: trained without AFP (set "
     "MODEL.AFP.ENABLED False; AFP starts from them only when training) or with AFP fused before "
     "them (set MODEL.AFP.BOX_FUSE_POSITION / MASK_FUSE_POSITION before_first_layer)"),
    ("missing", "fc_fusion.", "no fully-connected fusion: set MODEL.FF.ENABLED False"),
    ("unexpected", "fc_fusion.", "fully-connected fusion weights: set MODEL.FF.ENABLED True"),
    ("missing", "backbone.bpa_", "no bottom-up path augmentation: set MODEL.BACKBONE.NAME "
     "build_resnet_fpn_backbone"),
    ("unexpected", "backbone.bpa_", "bottom-up path augmentation: set MODEL.BACKBONE.NAME "
     "build_resnet_pafpn_backbone"),
    ("missing", "sem_seg_head.", "no semantic segmentation head (an instance-segmentation "
     "checkpoint): use an instance config (MODEL.META_ARCHITECTURE GeneralizedRCNN), not a "
     "panoptic one"),
    ("missing", "roi_heads.mask_head.", "no mask head: set MODEL.MASK_ON False"),
    ("unexpected", "box_head.conv", "a box head with convolutions (the heavier head): set "
     "MODEL.ROI_BOX_HEAD.NUM_CONV and NUM_FC as it was trained (the release's: 4 and 1)"),
)
# fmt: on

# What a pickle may hold: NumPy arrays and scalars of plain dtypes, numbers, strings, containers.
_NUMPY_GLOBALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}
_SAFE_BUILTINS = {"set", "frozenset", "complex", "bytearray", "int", "float", "str", "bytes"}
_SAFE_BUILTINS |= {"list", "dict", "tuple", "bool", "slice"}
_PLAIN_DTYPES = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8".split())  # as NumPy pickles them
_DTYPE_KINDS = dict(O="object", V="void / structured", U="string", S="string", c="complex")
_DTYPE_KINDS.update(M="date / time", m="date / time")
_TEXT_CODECS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")
_FLAT = (str, bytes, int, float, complex, bool, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy.core or numpy._core, as this NumPy has
_SCALAR = np.float32(0).__reduce__()[0]
_MIN_LIMIT = 1 << 20  # what a file may make at least: bytes, elements, nested tuple items
# torch's rebuilds of a tensor of the size in their 3rd argument
_SIZED_REBUILDS = {"torch._utils._rebuild_" + n for n in ("tensor", "tensor_v2", "tensor_v3")}
_SIZED_REBUILDS |= {"torch._utils._rebuild_qtensor", "torch._utils._rebuild_wrapper_subclass"}


class _Refused(pickle.UnpicklingError):
    """What a file holds that panet_d2 does not read (completes "was not loaded: ")."""


def _size_left(f):
    position = f.tell()
    size = f.seek(0, os.SEEK_END) - position
    f.seek(position)
    return size


class _BoundedReader:
    """A file's reading methods that refuse to read beyond the ``size`` bytes it has left."""

    def __init__(self, file, size):
        self._file, self.left = file, size

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else n
        if n > self.left:
            msg = f"it declares {n} bytes of data where the file has {self.left} left"
            raise pickle.UnpicklingError(msg)
        data = self._file.read(n)
        self.left -= len(data)
        return data

    def readline(self, limit=-1):
        line = self._file.readline(self.left if limit is None or limit < 0 else limit)
        self.left -= len(line)
        return line


def _ndarray(*args):
    raise _Refused("it calls numpy.ndarray itself (NumPy's pickles do not)")


def _plain_dtype(obj, align=False, copy=True):
    name = obj.decode("latin1") if isinstance(obj, bytes) else obj
    if not isinstance(name, str) or name not in _PLAIN_DTYPES or align:
        what = _DTYPE_KINDS.get(str(name)[:1], "not a plain one")
        raise _Refused(f"it holds the NumPy dtype {str(name)[:20]!r} ({what})")
    return np.dtype(name, align=False, copy=True)


def _check_plain(dtype):
    plain = isinstance(dtype, np.dtype) and f"{dtype.kind}{dtype.itemsize}" in _PLAIN_DTYPES
    if not (plain and dtype.fields is None and dtype.subdtype is None and not dtype.metadata):
        raise _Refused(f"it holds a NumPy array or scalar of dtype {str(dtype)[:40]!r}")


class RestrictedUnpickler(pickle._Unpickler):
    """Python's unpickler of NumPy arrays and scalars of plain dtypes, numbers, strings and
    containers, none larger than the file's ``size``; anything else raises ``UnpicklingError``.
    ``scan=True``: the pre-scan of a torch pickle, whose torch calls and storages it sizes."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, size=None, scan=False, **kwargs):
        left = _size_left(file)
        self._size = left if size is None else size
        self._limit, self._scan, self._tuples = max(self._size, _MIN_LIMIT), scan, {}
        super().__init__(_BoundedReader(file, left), **kwargs)

    def find_class(self, module, name):
        package, _, submodule = module.rpartition(".")
        if package in ("numpy.core", "numpy._core") and name in _NUMPY_GLOBALS.get(submodule, ()):
            return getattr(self, "_numpy" + name.lstrip("_"))
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return lambda *args: self._builtin(name, args)
        known = {
            ("numpy", "ndarray"): _ndarray,
            ("numpy", "dtype"): _plain_dtype,
            ("collections", "OrderedDict"): lambda *args: self._builtin("OrderedDict", args),
            ("_codecs", "encode"): self._encode,
        }
        if (module, name) in known:
            return known[(module, name)]
        if self._scan and module.partition(".")[0] == "torch":
            return lambda *args: self._torch_call(f"{module}.{name}", args)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def _too_large(self, n, what):
        if n > self._limit:
            raise _Refused(f"it {what}, more than the file's own {self._size} bytes")

    def _builtin(self, name, args):
        """``name(*args)`` of flat values, containers or (bytes) a size within the file's."""
        if name in ("bytes", "bytearray") and len(args) == 1 and type(args[0]) is int:
            self._too_large(args[0], f"makes a {name} of {args[0]} bytes")
            flat = True
        elif name in ("bytes", "bytearray", "str") and len(args) == 2:
            flat = isinstance(args[0], (str, bytes)) and args[1] in _TEXT_CODECS
        elif name in ("list", "tuple", "set", "frozenset", "dict", "OrderedDict", "bytes"):
            flat = len(args) <= 1 and all(isinstance(a, _CONTAINERS + (bytes,)) for a in args)
            flat = flat and not (name != "bytes" and args and isinstance(args[0], bytes))
        else:
            flat = all(isinstance(a, _FLAT) for a in args)
        if not flat:
            types = ", ".join(type(a).__name__ for a in args)
            raise _Refused(f"it calls {name}({types}), which no checkpoint needs")
        value = OrderedDict(*args) if name == "OrderedDict" else getattr(builtins, name)(*args)
        return self._count(value) if name == "tuple" else value

    def _torch_call(self, func, args):
        """A call of a torch pickle (a tensor, storage or rebuild) within the file's size."""
        ints = [a for a in args if type(a) is int]
        ints += [n for a in args if type(a) is tuple for n in a if type(n) is int]
        made = math.prod(ints) if func.endswith(("Tensor", "Storage")) else 0
        if func in _SIZED_REBUILDS and len(args) > 2 and isinstance(args[2], tuple):
            made = math.prod(n for n in args[2] if type(n) is int) // 8  # 8 elements a byte
        self._too_large(made, f"makes a {func} of {made} elements or bytes")
        return object()  # (what torch makes)

    def persistent_load(self, pid):
        """A storage of a torch pickle (scan): declared within the file's size."""
        if not self._scan:
            return super().persistent_load(pid)
        numel = pid[4] if isinstance(pid, tuple) and len(pid) > 4 else 0
        if type(numel) is int:
            self._too_large(numel, f"declares a storage of {numel} elements")
        return object()

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in _TEXT_CODECS:
            raise _Refused(f"it calls _codecs.encode({type(obj).__name__}, {str(encoding)[:20]!r})")
        return codecs.encode(obj, encoding, errors)

    def _numpyreconstruct(self, subtype, shape, typecode):
        # NumPy pickles an array as _reconstruct(ndarray, (0,), b"b") and its state (BUILD)
        if subtype is not _ndarray or shape != (0,) or typecode not in (b"b", "b"):
            raise _Refused("it makes a NumPy array another way than NumPy pickles one")
        return _RECONSTRUCT(np.ndarray, (0,), b"b")

    def _numpyscalar(self, dtype, data=None):
        _check_plain(dtype)
        if not isinstance(data, (bytes, str)) or len(data) != dtype.itemsize:
            raise _Refused(f"it makes a NumPy {dtype} scalar from other data")
        return _SCALAR(dtype, data)

    def _numpyfrombuffer(self, buf, dtype, shape, order, axis_order=None):
        _check_plain(dtype)
        if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F", "K", "A"):
            raise _Refused("it makes a NumPy array from other data than bytes")
        array = np.frombuffer(buf, dtype=dtype)
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order=order)

    def _count(self, t):
        """Tuple ``t``, refused beyond the file's size in items nested (with repeats)."""
        n = 1 + sum(self._tuples.get(id(c), (c, 1))[1] for c in t if type(c) is tuple)
        self._too_large(n, f"makes tuples nested to {n} items (hashing them would not end)")
        self._tuples[id(t)] = (t, n)
        return t

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):  # plain: (3, order, None, None, None, -1, -1, 0)
            plain = isinstance(state, tuple) and len(state) == 8 and state[0] == 3
            plain = plain and state[1] in ("<", ">", "|", "=")
            plain = plain and all(v is None or type(v) is int for v in state[2:])
            if not (plain and state[2:] == (None, None, None, -1, -1, 0)):
                raise _Refused(
                    f"it holds a NumPy dtype with another state ({repr(state)[:80]}): fields, "
                    "sizes or flags that make arrays read outside their data"
                )
        elif type(inst) is np.ndarray:  # (version,) shape, a plain dtype, fortran order, its bytes
            array = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
            if not (isinstance(array, tuple) and len(array) == 4):
                raise _Refused("it holds a NumPy array with another state than NumPy pickles")
            shape, dtype, _, data = array
            if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
                raise _Refused(f"it holds a NumPy array of shape {repr(shape)[:40]}")
            _check_plain(dtype)
            size = dtype.itemsize * math.prod(shape)
            if not isinstance(data, (bytes, bytearray, str)) or len(data) != size:
                raise _Refused(f"its data do not make the {shape} {dtype} array it declares")
        elif self._scan:  # what torch's unpickler sets, the scan does not need
            del self.stack[-1]
            return
        elif not (type(inst) is OrderedDict and isinstance(state, dict)):
            raise _Refused(f"it sets the state of a {type(inst).__name__}")
        super().load_build()

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self._too_large(n, f"makes a bytearray of {n} bytes")
        value = bytearray(n)
        self.readinto(value)
        self.append(value)

    def load_newobj(self):
        if not self._scan:
            raise _Refused("it creates a class instance (NEWOBJ)")
        args = self.stack.pop()  # (NEWOBJ_EX, which torch refuses, ends the scan here)
        self.stack[-1] = self.stack[-1](*args)

    def _counted_tuple(self, load):
        load(self)
        self._count(self.stack[-1])

    dispatch[pickle.BUILD[0]], dispatch[pickle.BYTEARRAY8[0]] = load_build, load_bytearray8
    dispatch[pickle.NEWOBJ[0]] = dispatch[pickle.NEWOBJ_EX[0]] = load_newobj
    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        dispatch[_op[0]] = lambda self, load=dispatch[_op[0]]: self._counted_tuple(load)


def _scan_torch_file(f):
    """Refuses a torch file whose zip members or pickles make more than its size (else torch)."""
    start, size = f.tell(), _size_left(f)
    try:
        zipped = f.read(4) == b"PK\x03\x04"  # torch's test for its zip format
        f.seek(start)
        if not zipped:  # legacy: magic number, protocol, system info, the object, storage keys
            scan = RestrictedUnpickler(f, size=size, scan=True, encoding="latin1")
            for _ in range(5):
                scan.load()
        else:
            with zipfile.ZipFile(f) as archive:
                members = archive.infolist()
                declared = sum(m.file_size for m in members)
                if declared > size:
                    raise _Refused(
                        f"its {len(members)} zip members declare {declared} bytes, more than "
                        f"the file's own {size} bytes"
                    )
                for m in members:
                    if m.filename.endswith("data.pkl"):
                        data = io.BytesIO(archive.read(m))
                        RestrictedUnpickler(data, size=size, scan=True, encoding="latin1").load()
    except _Refused:
        raise
    except Exception:  # not a file torch reads: torch says why
        pass
    f.seek(start)


def check_weights_file(path, key, scratch=False):
    """A CheckpointError if the local checkpoint ``path`` (config ``key``) is not a file."""
    if "://" not in path and not os.path.isfile(path):
        other = "is not a regular file" if os.path.exists(path) else "does not exist"  # a pipe
        problem = "is a folder" if os.path.isdir(path) else other
        raise CheckpointError(
            f"Checkpoint {path!r} {problem} ({key}). Give a local .pth/.pkl file or a Detectron2 "
            f"model-zoo URL{', or an empty path to start from scratch' if scratch else ''}."
        )


def _refused_file(path, e):
    return CheckpointError(
        f"Checkpoint {path!r} was not loaded: {e}. panet_d2 reads tensors, NumPy arrays of bool, "
        "integer and float dtypes, numbers, strings and containers, none larger than the file."
    )


def scan_torch_file(path):
    """Refuses (:class:`CheckpointError`), as :func:`read_checkpoint` does, the torch file ``path``
    whose pickles call what is not data or make more than the file holds; reads no tensor."""
    try:
        with PathManager.open(path, "rb") as f:
            _scan_torch_file(f)
    except _Refused as e:
        raise _refused_file(path, e) from None


def read_checkpoint(path):
    """The object in a checkpoint file, read as data (a ``.pkl`` by :class:`RestrictedUnpickler`,
    else by ``torch.load(weights_only=True)`` once scanned); else a one-line CheckpointError."""
    try:
        with PathManager.open(path, "rb") as f:
            if path.endswith(".pkl"):
                if f.read(4) == b"PK\x03\x04":  # torch.save's zip: torch.load would read it
                    raise CheckpointError(
                        f"Checkpoint {path!r} is a torch file (torch.save) named .pkl, which is "
                        "read as a pickle of NumPy arrays (Detectron2's model zoo, Caffe2): "
                        "rename it to .pth."
                    )
                f.seek(0)
                return RestrictedUnpickler(f, encoding="latin1").load()
            _scan_torch_file(f)
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except CheckpointError:
        raise
    except _Refused as e:
        raise _refused_file(path, e) from None
    except Exception as e:
        # torch: "... Unsupported global: GLOBAL posix.system was not an allowed global ..."
        found = re.search(r"GLOBAL ([\w.]+)|refused global ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"Checkpoint {path!r} was not loaded: besides tensors and plain values it holds "
                f"the Python object {found.group(1) or found.group(2)!r}, which loading would call "
                "(it could run any code). panet_d2 reads tensors (a torch file) or NumPy arrays (a "
                ".pkl), numbers, strings and containers: re-save the state dicts of a file you "
                "trust (e.g. torch.save({'model': model.state_dict()}, path))."
            ) from None
        detail = str(e)
        # torch's weights-only refusal of a file that is no pickle: its reason, not its advice
        # to load the file with weights-only loading off (which runs what a pickle holds)
        reason = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", detail, re.S)
        detail = " ".join((reason.group(1) if reason else detail).split()) or type(e).__name__
        detail = detail[:300] + " ..." if len(detail) > 300 else detail
        raise CheckpointError(
            f"Cannot read checkpoint {path!r}: {type(e).__name__}: {detail} (truncated or not a "
            "checkpoint?). Expected a .pth written by panet_d2 or Detectron2 (torch.save) or a "
            "Detectron2 model-zoo .pkl."
        ) from None


def abbrev(keys, n=3):
    """The first ``n`` of ``keys`` (sorted) and how many more."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def non_finite(state):
    """The floating tensors of ``state`` (a state dict) that hold NaN or inf, and the first named
    ("KEY has N of M values not finite (K tensor(s) in all)"; empty when none)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    n, m = (int((~state[bad[0]].isfinite()).sum()), state[bad[0]].numel()) if bad else (0, 0)
    return bad, bad and f"{bad[0]} has {n} of {m} values not finite ({len(bad)} tensor(s) in all)"


def _head_of(key):
    """The module prefix of the RoI head of tensor ``key`` ("roi_heads.box_head.")."""
    return ".".join(key.split(".")[:2]) + "."


def fit_hints(missing, unexpected, file_keys, model_keys):
    """The :data:`_HINTS` (what the file has: the config value to set) that hold for a file of
    tensors ``file_keys``, a model of ``model_keys``, ``missing`` and ``unexpected`` tensors."""
    against, hints = {"missing": (missing, file_keys), "unexpected": (unexpected, model_keys)}, []
    for where, part, hint in _HINTS:
        if where == "single":  # and the file's head has no per-level tensor (HHD's has)
            holds = any(
                part in k
                and k.replace(part, ".") in file_keys
                and not any(part in f and f.startswith(_head_of(k)) for f in file_keys)
                for k in missing
            )
        elif where == "position":
            holds = any(part in k for k in unexpected) and not any(part in k for k in model_keys)
            holds = holds and any(".per_level." in k for k in model_keys)
        else:
            keys, other = against[where]
            holds = any(part in k for k in keys) and not any(part in k for k in other)
        hints += [hint] if holds else []
    return hints


def _of_another_form(model, key):
    """Whether ``key``, a tensor that ``model`` has not, is one that a module of it lacks (a bias),
    of a block beyond one of its sequences (a deeper stage) or of the BPA / FF it has not."""
    modules, parts = dict(model.named_modules()), key.split(".")
    i = max((i for i in range(1, len(parts)) if ".".join(parts[:i]) in modules), default=0)
    seq = isinstance(modules[".".join(parts[:i])], (torch.nn.Sequential, torch.nn.ModuleList))
    if i == len(parts) - 1 or (seq and i and parts[i].isdigit()):
        return not key.endswith(NOT_REQUIRED_SUFFIXES)
    parts = (p for w, p, _ in _HINTS if w == "unexpected" and p in key)
    return any(key.split(p)[0].rstrip(".") in modules for p in parts)


class PANetCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer that reads files as data, verifies what it loaded and saves
    atomically (removing the partial files of an interrupted save). ``warm_start`` (bool): True
    for MODEL.WEIGHTS of training: new layers and other class counts allowed, "" starts from
    scratch. False: every tensor from the file. Resuming is strict."""

    def __init__(self, model, save_dir="", *, save_to_disk=None, warm_start=False, **kwargs):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **kwargs)
        self.warm_start, self._loading = warm_start, None
        if self.save_dir and self.save_to_disk and self.path_manager.isdir(self.save_dir):
            for name in self.path_manager.ls(self.save_dir):
                if _AtomicFile.NAME.search(name):
                    logger.info(f"Removing {name} left by an interrupted save")
                    self.path_manager.rm(os.path.join(self.save_dir, name))

    def save(self, name: str, **kwargs) -> None:
        """fvcore's, atomic; refuses a diverged model's weights; a failed write: CheckpointError."""
        if not self.save_dir or not self.save_to_disk:
            return
        bad = non_finite(self.model.state_dict())[0]
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise TrainingDivergedError(
                f"Not saving checkpoint {name + '.pth'!r}: {len(bad)} tensor(s) of the model "
                f"hold NaN or inf ({abbrev(bad)}); the last checkpoint is "
                f"{repr(last) if last else 'none'}.",
                last_checkpoint=last,
            )
        path = os.path.join(self.save_dir, name + ".pth")
        try:
            with atomic_output_files():  # the checkpoint and last_checkpoint
                super().save(name, **kwargs)
        except (OSError, RuntimeError) as e:
            cause = os_error_cause(e)  # torch.save wraps a failed write in a RuntimeError
            if cause is None:
                raise
            last = os.path.basename(self.get_checkpoint_file()) if self.has_checkpoint() else ""
            last = ": last_checkpoint names {!r}".format(last) if last else ""
            raise CheckpointError(
                f"Cannot save checkpoint {path!r}: {cause.strerror or cause} (the previous "
                f"checkpoint is intact{last})."
            ) from None

    def resume_or_load(self, path, *, resume=True):
        """fvcore's; resuming from the last checkpoint of ``save_dir`` is never a warm start."""
        if resume and self.has_checkpoint():
            with mock.patch.object(self, "warm_start", False):
                return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

    def load(self, path, *args, **kwargs):
        """fvcore's, refusing at once an empty path (unless a warm start) or a missing file."""
        if not path and not self.warm_start:
            raise CheckpointError(
                "No checkpoint given (MODEL.WEIGHTS, or train.init_checkpoint of a LazyConfig, is "
                "empty): evaluating, exporting or showing a randomly initialised model gives "
                "meaningless results. Give the checkpoint to use (e.g. MODEL.WEIGHTS "
                "output/model_final.pth)."
            )
        if not path:  # a warm start from scratch (Detectron2 would log "Loading from  ...")
            logger.info("No weights (MODEL.WEIGHTS is empty): random initialisation.")
            return {}
        check_weights_file(path, "MODEL.WEIGHTS or the checkpoint given to load", self.warm_start)
        try:
            with mock.patch.object(self, "_loading", path):
                return super().load(path, *args, **kwargs)
        except OSError as e:  # a URL's download (urllib's URLError), a read: one line
            why = " ".join(str(getattr(e, "reason", None) or e.strerror or e).split())
            url = " Download it where the network reaches, give the local file." * ("://" in path)
            raise CheckpointError(f"Cannot read checkpoint {path!r}: {why}.{url}") from None
        except ValueError as e:  # torch's Optimizer.load_state_dict, as --resume loads it
            if "parameter group" not in str(e):
                raise
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the optimizer: {e}: the config groups the "
                "parameters otherwise than the run that saved it (SOLVER.BIAS_LR_FACTOR, "
                "SOLVER.WEIGHT_DECAY_NORM / _BIAS, MODEL.BACKBONE.FREEZE_AT), or the file is "
                "another model's; resume with the config it was trained with."
            ) from None

    def _refused(self, reason):
        return CheckpointError(f"Checkpoint {self._loading or 'the checkpoint'!r} {reason}")

    def _load_file(self, filename):
        """DetectionCheckpointer's formats, each read by :func:`read_checkpoint`."""

        def refused(reason):  # as _refused, naming the file read
            return CheckpointError(f"Checkpoint {filename!r} {reason}")

        if not filename.endswith((".pkl", ".pyth")):
            loaded = super()._load_file(filename)  # reads with _torch_load; URL queries too
        elif filename.endswith(".pyth"):  # pycls
            data = read_checkpoint(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                msg = f"Cannot load .pyth file {filename!r}: pycls checkpoints hold 'model_state'."
                raise CheckpointError(msg)
            state = data["model_state"]
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            loaded = {"model": state, "__author__": "pycls", "matching_heuristics": True}
        else:
            loaded = read_checkpoint(filename)
            if not isinstance(loaded, dict):
                raise refused(f"holds a {type(loaded).__name__}, not a dict of arrays.")
            if "model" in loaded and "__author__" in loaded:  # Detectron2's model zoo
                self.logger.info(f"Reading a file from '{loaded['__author__']}'")
            else:  # Caffe2 / Detectron1 model zoo
                blobs = loaded.get("blobs", loaded)
                if not isinstance(blobs, dict):
                    found = f"its 'blobs' is a {type(blobs).__name__}, not a dict of arrays"
                    raise refused(f"holds no model state dict ({found}).")
                blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
                loaded = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        model = loaded["model"]  # each branch gives one (Detectron2's puts a file's dict there)
        if not isinstance(model, dict):
            found = f"its 'model' is a {type(model).__name__}"
            raise refused(f"holds no model state dict ({found}, not a dict of tensors).")
        return loaded

    def _torch_load(self, f):
        loaded = read_checkpoint(f)  # tensors and plain values only: no allow-list needed
        if not isinstance(loaded, dict):  # (Detectron2 looks for "model" in it)
            found = f"a {type(loaded).__name__}"
            raise self._refused(f"holds no model state dict ({found}, not a dict of tensors).")
        return loaded

    def _load_model(self, checkpoint):
        """Detectron2's loading between checks (floating, fit, finite), undone if one fails."""
        state = checkpoint["model"]
        for k, v in list(state.items()):  # fvcore's conversion of NumPy arrays, in native order
            if isinstance(v, np.ndarray):
                v = v if v.dtype.isnative else v.astype(v.dtype.newbyteorder("="))
                state[k] = torch.from_numpy(v)
            elif not isinstance(v, torch.Tensor):
                raise self._refused(
                    f"was not loaded: its model state holds a {type(v).__name__} as "
                    f"{str(k)[:100]!r}, not a tensor or array."
                )
        if checkpoint.get("matching_heuristics", False):  # another code base's names: ours first
            c2 = checkpoint.get("__author__") == "Caffe2"
            state = align_and_update_state_dicts(self.model.state_dict(), state, c2_conversion=c2)
            checkpoint.update(model=state, matching_heuristics=False)  # done: D2 skips it
        consume_prefix_in_state_dict_if_present(state, "module.")  # as fvcore does
        file_keys = set(state)  # (the AFP layers take single-level tensors while loading)
        targets = self._check_dtypes(state)
        before = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        try:
            self._check_fit(incompatible, file_keys)
            loaded = {k: v for k, v in self.model.state_dict().items() if k in targets}
            bad, first = non_finite(loaded)
            if bad:  # NaN or inf in what the file loaded
                stored = state.get(bad[0])  # (None: an AFP layer of a single one)
                why = "the weights of a diverged or damaged run; give an earlier checkpoint"
                if getattr(stored, "dtype", None) == torch.float16 and stored.isinf().any():
                    why = (
                        "stored as float16, whose largest value is 65504, beyond which they "
                        "became inf: save the checkpoint in float32"
                    )
                raise self._refused(f"was not loaded: its weights hold NaN or inf: {first}: {why}.")
        except CheckpointError:
            self.model.load_state_dict(before)
            raise
        return incompatible

    def _check_dtypes(self, state):
        """Refuses a tensor of ``state`` not plain floating for a floating one of the model; returns
        the model's tensors that get a value (an AFP layer's per-level ones from a single one)."""
        model = self.model.state_dict()
        singles = {PER_LEVEL_NAME.sub(r"\1", k): k for k in reversed(model)}  # the first of each
        targets = {}
        for k, v in state.items():
            if k in model and tuple(v.shape) == tuple(model[k].shape):
                targets[k] = k
            elif k not in model and singles.get(k, k) != k:
                targets[k] = singles[k]
        for k, target in targets.items():
            v, ours = state[k], model[target]
            plain = v.layout == torch.strided and v.device.type != "meta"
            if ours.is_floating_point() and not (v.is_floating_point() and plain):
                found = str(v.dtype) + ("" if plain else f" ({v.layout}, {v.device.type})")
                raise self._refused(
                    f"was not loaded: its tensor {k!r} is {found} where the model's is "
                    f"{ours.dtype}: weights are floating point (a file whose weights were cast to "
                    "integers or bool is damaged; give the float one)."
                )
        return set(targets.values())

    def _check_fit(self, incompatible, file_keys):
        """Refuses a file (tensors ``file_keys``, fvcore's report ``incompatible``) with none of the
        model's tensors, other shapes (but a warm start's predictors) or (not warm) one missing."""
        model_keys = list(self.model.state_dict())
        required = [k for k in model_keys if not k.endswith(NOT_REQUIRED_SUFFIXES)]
        if required and not file_keys.intersection(required):
            raise self._refused(
                f"holds none of the model's {len(required)} tensors (it holds {len(file_keys)} "
                f"tensor(s): {abbrev(file_keys) or 'nothing'}): not a checkpoint of this model."
            )
        shapes = incompatible.incorrect_shapes
        wrong = [w for w in shapes if not w[0].endswith(NOT_REQUIRED_SUFFIXES)]
        classes = [w for w in wrong if w[0].startswith(tuple(CLASS_KEYS))]
        others = [w for w in wrong if not w[0].startswith(tuple(CLASS_KEYS))]
        missing = [k for k in required if k not in file_keys]
        unexpected = incompatible.unexpected_keys
        hints = ["the file has " + h for h in fit_hints(missing, unexpected, file_keys, model_keys)]
        if others:
            listed = [f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in others[:3]]
            listed = "; ".join(listed) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            advice = "; ".join(hints) or (
                "was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictors may differ, "
                "when training"
            )
            raise self._refused(
                f"does not fit the model: {len(others)} tensor(s) have other shapes: {listed}: "
                f"{advice}."
            )
        if self.warm_start:
            return
        if classes:
            fits = {}  # per config key, its first tensor (cls_score first)
            for k, c, m in classes:
                key, count = next(v for p, v in CLASS_KEYS.items() if k.startswith(p))
                n_file, n_model = (count(s[0] if s else 0) for s in (c, m))
                if n_file is not None and n_file != n_model:
                    fits.setdefault(key, (k, n_file, n_model))
            what = "; ".join(
                f"{k} has {n} classes in the file, the config {key} {m}: set {key} {n}"
                for key, (k, n, m) in fits.items()
            )
            what = what or f"{abbrev(w[0] for w in classes)} have other shapes ({classes[0]})"
            raise self._refused(
                f"does not fit the model: {what} ({len(classes)} "
                f"class-dependent tensor(s) differ: {abbrev(c[0] for c in classes)}). Only "
                "training may start new predictors (fine-tuning to other classes)."
            )
        extra = [k for k in unexpected if _of_another_form(self.model, k)]  # a bias, a deeper stage
        if missing or extra:
            what = f"{len(missing)} of its {len(required)} tensors are not in the file"
            if not missing:
                what = f"the file has {len(extra)} tensors of parts the model has in another form"
            raise self._refused(
                f"does not fit the model: {what} ({abbrev(missing or extra)}){': ' * bool(hints)}"
                f"{'; '.join(hints)}. Give the checkpoint of this model, or the config it was "
                "trained with."
            )
