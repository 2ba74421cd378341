# -*- coding: utf-8 -*-
"""
:class:`PANetCheckpointer`: Detectron2's :class:`DetectionCheckpointer` that reads files as data,
never code, and nothing larger than the file (:func:`read_checkpoint`), checks what a file loads
(floating weights without NaN or inf; fvcore's report of what it loaded: refusing weights that do
not fit, naming the config keys that would) and saves atomically. Why, and every message:
docs/reliability.md.
"""

import builtins
import codecs
import io
import logging
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager

from .errors import CheckpointError, TrainingDivergedError

__all__ = ["PANetCheckpointer", "RestrictedUnpickler", "read_checkpoint"]

logger = logging.getLogger(__name__)

# Tensors of the model a file need not hold: a counter inference does not use, the config's pixel
# normalisation. Everything else, BatchNorm statistics included, must come from the file.
NOT_REQUIRED_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")

# Class-dependent tensors (a warm start may start them new): key prefix -> (config key, the classes
# of a tensor of n rows, None where n says nothing).
_ROI, _SEM = "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
_CLASS_KEYS = {
    "roi_heads.box_predictor.cls_score.": (_ROI, lambda n: n - 1),
    "roi_heads.box_predictor.bbox_pred.": (_ROI, lambda n: n // 4 if n > 4 else None),
    "roi_heads.mask_head.predictor.": (_ROI, lambda n: n if n > 1 else None),
    "sem_seg_head.predictor.": (_SEM, lambda n: n),
}
CLASS_DEPENDENT_PREFIXES = tuple(_CLASS_KEYS)

# What mismatched keys mean: (where, key part, what the file has: what to set). "missing": a tensor
# of the model with that part is not in the file, which has none; "unexpected": the file has one,
# the model none; "single": a per-level tensor is missing, the file has its single-level version.
# fmt: off
_HINTS = (
    ("unexpected", ".per_level.", "AFP per-level weights: set MODEL.AFP.ENABLED True"),
    ("single", ".per_level.", "single-level box fc1 / mask conv1 (trained without AFP): set "
     "MODEL.AFP.ENABLED False (AFP starts from them only when training)"),
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
)
# fmt: on

# What a Detectron2 .pkl may hold: NumPy arrays and scalars of plain dtypes, numbers, strings and
# containers; the globals that rebuild them, each checking its arguments (RestrictedUnpickler).
_NUMPY_GLOBALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}
_SAFE_BUILTINS = {"set", "frozenset", "complex", "bytearray", "int", "float", "str", "bytes"}
_SAFE_BUILTINS |= {"list", "dict", "tuple", "bool", "slice"}
_PLAIN_DTYPES = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8".split())  # as NumPy pickles them
_DTYPE_KINDS = {
    "O": "object",
    "V": "void / structured",
    "U": "string",
    "S": "string",
    "c": "complex",
    "M": "date / time",
    "m": "date / time",
}
_TEXT_CODECS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")
_FLAT = (str, bytes, int, float, complex, bool, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)
# NumPy's own rebuilding functions (numpy.core or numpy._core, whichever this NumPy has)
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
# What a file may make, at least: bytes, elements, items of nested tuples (else its own size).
_MIN_LIMIT = 1 << 20
# The pickles of torch's legacy (not zip) format: magic number, protocol, system info, the object,
# the storage keys; torch's functions that rebuild a tensor of the size in their 3rd argument.
_LEGACY_PICKLES = 5
_SIZED_REBUILDS = {
    "torch._utils." + name
    for name in ("tensor", "tensor_v2", "tensor_v3", "qtensor", "wrapper_subclass")
    for name in ["_rebuild_" + name]
}

# An AFP layer's per-level tensor name -> its single-level one, which the layer takes when loading
# (modeling/layers.py, _PerLevelLayer._single_level_name)
_PER_LEVEL = re.compile(r"(^|\.)(per_level|levels\.\d+)\.")

# Suffix of the file a save writes in the checkpoint's folder before renaming it over the file.
PARTIAL_SUFFIX = ".partial"


class _Refused(pickle.UnpicklingError):
    """Something a file holds that panet_d2 does not read; the message completes "was not loaded:
    "."""


def _size_left(f):
    """The bytes of file ``f`` from its position to its end."""
    try:
        return os.fstat(f.fileno()).st_size - f.tell()
    except (AttributeError, OSError, ValueError):
        position = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(position)
        return end - position


class _BoundedReader:
    """The reading methods of a file that refuse to read more than the ``size`` bytes it has left:
    a pickle cannot make the reader allocate what it declares beyond the file's end."""

    def __init__(self, file, size):
        self._file, self.left = file, size

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else n
        if n > self.left:
            raise pickle.UnpicklingError(
                f"it declares {n} bytes of data where the file has {self.left} left"
            )
        data = self._file.read(n)
        self.left -= len(data)
        return data

    def readline(self, limit=-1):
        line = self._file.readline(self.left if limit is None or limit < 0 else limit)
        self.left -= len(line)
        return line

    def tell(self):
        return self._file.tell()


class _Call:
    """What :class:`RestrictedUnpickler` gives for an allowed global: calling it checks the
    arguments, then makes the value."""

    def __init__(self, name, make):
        self.name, self._make = name, make

    def __call__(self, *args):
        return self._make(*args)


def _refuse_call(*args):
    raise _Refused("it calls numpy.ndarray itself (NumPy's pickles do not)")


_NDARRAY = _Call("numpy.ndarray", _refuse_call)


def _plain_dtype(obj, align=False, copy=True):
    """numpy.dtype(obj) for a plain bool, integer or float dtype (a new object: its state, set
    next, cannot change NumPy's own)."""
    name = obj.decode("latin1") if isinstance(obj, bytes) else obj
    if not isinstance(name, str) or name not in _PLAIN_DTYPES or align:
        what = _DTYPE_KINDS.get(str(name)[:1], "not a plain one")
        raise _Refused(f"it holds the NumPy dtype {str(name)[:20]!r} ({what})")
    return np.dtype(name, align=False, copy=True)


def _check_plain(dtype):
    plain = isinstance(dtype, np.dtype) and f"{dtype.kind}{dtype.itemsize}" in _PLAIN_DTYPES
    if not (plain and dtype.fields is None and dtype.subdtype is None and not dtype.metadata):
        raise _Refused(f"it holds a NumPy array or scalar of dtype {str(dtype)[:40]!r}")


def _check_dtype_state(state):
    """The state NumPy pickles for a plain dtype: (3, byte order, None, None, None, -1, -1, 0)."""
    plain = isinstance(state, tuple) and len(state) == 8 and state[0] == 3
    plain = plain and state[1] in ("<", ">", "|", "=")
    plain = plain and all(v is None or type(v) is int for v in state[2:])
    if not (plain and state[2:] == (None, None, None, -1, -1, 0)):
        raise _Refused(
            f"it holds a NumPy dtype with another state ({repr(state)[:80]}): fields, sizes or "
            "flags that make arrays read outside their data"
        )


def _check_array_state(state):
    """An ndarray's state: (version,) shape, a plain dtype, fortran order, exactly its bytes."""
    state = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
    if not (isinstance(state, tuple) and len(state) == 4):
        raise _Refused("it holds a NumPy array with another state than NumPy pickles")
    shape, dtype, _, data = state
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise _Refused(f"it holds a NumPy array of shape {repr(shape)[:40]}")
    _check_plain(dtype)
    size = dtype.itemsize * math.prod(shape)
    if not isinstance(data, (bytes, bytearray, str)) or len(data) != size:
        raise _Refused(f"its data do not make the {shape} {dtype} array it declares")


class RestrictedUnpickler(pickle._Unpickler):
    """
    An unpickler that rebuilds NumPy arrays and scalars of plain dtypes (bool, integers, floats),
    numbers, strings and containers only (what Detectron2's model-zoo and Caffe2 ``.pkl`` files
    hold), within the file's size. Any other global raises ``pickle.UnpicklingError`` naming it;
    other dtypes or dtype states, calls with other arguments, data declared beyond the file and
    anything larger than the file (a ``bytearray(10**9)``, shared tuples nested to billions of
    items) raise one naming what. Python's own unpickler, whose BUILD can be checked (NumPy
    dtypes and arrays get their state there): docs/reliability.md.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, size=None, **kwargs):
        size = _size_left(file) if size is None else size
        self._size, self._limit = size, max(size, _MIN_LIMIT)
        self._tuples = {}  # id -> (tuple, its items nested, counted with repeats)
        super().__init__(_BoundedReader(file, size), **kwargs)

    def find_class(self, module, name):
        package, _, submodule = module.rpartition(".")
        if package in ("numpy.core", "numpy._core") and name in _NUMPY_GLOBALS.get(submodule, ()):
            return _Call(f"numpy.{name}", getattr(self, "_numpy" + name.lstrip("_")))
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _Call(name, lambda *args: self._builtin(name, args))
        known = {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _Call("numpy.dtype", _plain_dtype),
            ("collections", "OrderedDict"): _Call(
                "OrderedDict", lambda *args: self._builtin("OrderedDict", args, OrderedDict)
            ),
            ("_codecs", "encode"): _Call("_codecs.encode", self._encode),
        }
        if (module, name) in known:
            return known[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def _too_large(self, n, what):
        if n > self._limit:
            raise _Refused(f"it makes {what}, more than the file's own {self._size} bytes")

    def _builtin(self, name, args, make=None):
        """``name(*args)`` for a builtin of :data:`_SAFE_BUILTINS` (or OrderedDict): numbers and
        strings from flat values, containers from containers, bytes from bytes, text or a size
        within the file's."""
        make = make or getattr(builtins, name)
        if name in ("bytes", "bytearray") and len(args) == 1 and type(args[0]) is int:
            self._too_large(args[0], f"a {name} of {args[0]} bytes")
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
        value = make(*args)
        return self._count(value) if name == "tuple" else value

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in _TEXT_CODECS:
            raise _Refused(f"it calls _codecs.encode({type(obj).__name__}, {str(encoding)[:20]!r})")
        return codecs.encode(obj, encoding, errors)

    def _numpyreconstruct(self, subtype, shape, typecode):
        # NumPy pickles an array as _reconstruct(ndarray, (0,), b"b") and its state (BUILD)
        if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
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
        """Refuses a tuple whose items, nested and counted with repeats, exceed the file's size
        (hashing it, as a dict key, would not end); returns it."""
        n = 1 + sum(self._tuples.get(id(c), (c, 1))[1] for c in t if type(c) is tuple)
        self._too_large(n, f"tuples nested to {n} items (hashing them would not end)")
        self._tuples[id(t)] = (t, n)
        return t

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(state)
        elif type(inst) is np.ndarray:
            _check_array_state(state)
        elif not (type(inst) is OrderedDict and isinstance(state, dict)):
            raise _Refused(f"it sets the state of a {type(inst).__name__}")
        super().load_build()

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self._too_large(n, f"a bytearray of {n} bytes")
        value = bytearray(n)
        self.readinto(value)
        self.append(value)

    def load_newobj(self):
        raise _Refused("it creates a class instance (NEWOBJ)")


def _counted(load):
    def load_tuple(self):
        load(self)
        self._count(self.stack[-1])

    return load_tuple


RestrictedUnpickler.dispatch[pickle.BUILD[0]] = RestrictedUnpickler.load_build
RestrictedUnpickler.dispatch[pickle.BYTEARRAY8[0]] = RestrictedUnpickler.load_bytearray8
for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX):
    RestrictedUnpickler.dispatch[_op[0]] = RestrictedUnpickler.load_newobj
for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
    RestrictedUnpickler.dispatch[_op[0]] = _counted(pickle._Unpickler.dispatch[_op[0]])


class _Global(str):
    """A global named in a pickle, as :func:`_scan_torch_pickle` follows it."""


def _torch_call(func, args, size):
    """Refuses a call of a torch pickle that would make more bytes or elements than the file's
    ``size`` (at least 1 MiB): a bytearray, a legacy tensor or storage of a given size, a tensor
    rebuilt to a size (an expanded view, which loading may copy); text in a codec that grows it."""
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        return
    ints = [a for a in args if type(a) is int] + [
        n for a in args if type(a) is tuple for n in a if type(n) is int
    ]
    allocates = func in ("builtins.bytearray", "builtins.bytes")
    allocates = allocates or func.startswith("torch.") and func.endswith(("Tensor", "Storage"))
    made = math.prod(ints) if allocates else 0
    if func in _SIZED_REBUILDS and len(args) > 2 and isinstance(args[2], tuple):
        made = math.prod(n for n in args[2] if type(n) is int) // 8  # 8 elements a byte at most
    if made > max(size, _MIN_LIMIT):
        raise _Refused(
            f"it makes a {func} of {made} elements or bytes, more than the file's own {size} bytes"
        )
    if func == "_codecs.encode" and (len(args) < 2 or args[1] not in _TEXT_CODECS):
        raise _Refused(f"it calls _codecs.encode with the codec {str(args[1:])[:30]}")


def _scan_torch_pickle(file, size):
    """
    Follows one pickle of a torch file as torch's weights-only unpickler reads it (its opcodes
    only: any other ends the scan, torch refuses it) and refuses (:class:`_Refused`) before torch
    runs it what would make more than the file's ``size`` (at least 1 MiB): calls
    (:func:`_torch_call`), a storage of more elements (the legacy format allocates it as
    declared), tuples nested to more items (hashed as dict keys, they would take for ever).
    """
    stack, marks, memo, tuples, other = [], [], {}, {}, object()
    limit = max(size, _MIN_LIMIT)
    constants = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
    values = {"BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING"}
    for op, arg, _ in pickletools.genops(file):
        name = op.name
        if name in values or name in constants:
            stack.append(arg if name in values else constants[name])
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            stack.append(other)
        elif name == "GLOBAL":
            stack.append(_Global(arg.replace(" ", ".")))
        elif name == "MARK":
            marks.append(len(stack))
        elif name.startswith("TUPLE"):
            at = marks.pop() if name == "TUPLE" else len(stack) - int(name[-1])
            t = tuple(stack[at:])
            del stack[at:]
            n = 1 + sum(tuples.get(id(c), (c, 1))[1] for c in t if type(c) is tuple)
            if n > limit:
                raise _Refused(
                    f"it makes tuples nested to {n} items (hashing them would not end), more "
                    f"than the file's own {size} bytes"
                )
            tuples[id(t)] = (t, n)
            stack.append(t)
        elif name in ("APPENDS", "SETITEMS"):
            del stack[marks.pop() :]
        elif name in ("APPEND", "BUILD", "SETITEM"):
            del stack[-2 if name == "SETITEM" else -1 :]
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, other))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            _torch_call(stack.pop(), args, size)
            stack.append(other)
        elif name == "BINPERSID":
            pid = stack.pop()
            numel = pid[4] if isinstance(pid, tuple) and len(pid) > 4 else 0
            if type(numel) is int and numel > limit:
                raise _Refused(
                    f"it declares a storage of {numel} elements, more than the file's own {size} "
                    "bytes"
                )
            stack.append(other)
        elif name == "STOP":
            return True
        elif name != "PROTO":
            return False
    return False


def _scan_torch_file(f):
    """
    Refuses (:class:`_Refused`) a file that ``torch.load(weights_only=True)`` would let allocate
    more than the file's size: zip members declared larger than the file, and what
    :func:`_scan_torch_pickle` finds in its pickles (``data.pkl`` of a zip file; the pickles of
    the legacy format). A file torch cannot read is left to torch to say why.
    """
    start, size = f.tell(), _size_left(f)
    try:
        if f.read(4) == b"PK\x03\x04":  # torch's test for its zip format
            f.seek(start)
            with zipfile.ZipFile(f) as archive:
                members = archive.infolist()
                declared = sum(m.file_size for m in members)
                if declared > size:
                    raise _Refused(
                        f"its {len(members)} zip members declare {declared} bytes, more than the "
                        f"file's own {size} bytes"
                    )
                for m in members:
                    if m.filename.endswith("data.pkl"):
                        _scan_torch_pickle(io.BytesIO(archive.read(m)), size)
        else:
            f.seek(start)
            reader = _BoundedReader(f, size)
            for _ in range(_LEGACY_PICKLES):
                if not _scan_torch_pickle(reader, size):
                    break
    except _Refused:
        raise
    except Exception:  # not a file torch reads: torch says why
        pass
    f.seek(start)


def read_checkpoint(path):
    """
    Returns the object in a checkpoint file, read as data, never code: a ``.pkl`` with
    :class:`RestrictedUnpickler`, anything else with ``torch.load(weights_only=True)`` after
    :func:`_scan_torch_file`. Raises :class:`CheckpointError` (one line) naming what the file
    holds that loading would call or that panet_d2 does not read (other NumPy dtypes, more than
    the file's size), or why it cannot be read (missing, truncated, not a checkpoint).
    """
    try:
        with PathManager.open(path, "rb") as f:
            if path.endswith(".pkl"):
                return RestrictedUnpickler(f, encoding="latin1").load()
            _scan_torch_file(f)
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except _Refused as e:
        raise CheckpointError(
            f"Checkpoint {path!r} was not loaded: {e}. panet_d2 reads tensors, NumPy arrays of "
            "bool, integer and float dtypes, numbers, strings and containers, none larger than "
            "the file."
        ) from None
    except Exception as e:
        # torch: "... Unsupported global: GLOBAL posix.system was not an allowed global ..."
        found = re.search(r"GLOBAL ([\w.]+)|refused global ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"Checkpoint {path!r} was not loaded: besides tensors and plain values it holds "
                f"the Python object {found.group(1) or found.group(2)!r}, which loading would call "
                "(it could run any code). panet_d2 loads tensors, NumPy arrays, numbers, strings "
                "and containers only: re-save the state dicts of a file you trust (e.g. "
                "torch.save({'model': model.state_dict()}, path))."
            ) from None
        detail = " ".join(str(e).split()) or type(e).__name__
        detail = detail[:300] + " ..." if len(detail) > 300 else detail
        raise CheckpointError(
            f"Cannot read checkpoint {path!r}: {type(e).__name__}: {detail} (truncated or not a "
            "checkpoint?). Expected a .pth written by panet_d2 or Detectron2 (torch.save) or a "
            "Detectron2 model-zoo .pkl."
        ) from None


def _names(keys, n=3):
    """The first ``n`` of ``keys`` (sorted) and how many more."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _hints(missing, unexpected, model_keys, file_keys):
    """The hints of :data:`_HINTS` that hold: the config keys that would fit the file."""

    def has(keys, part):
        return any(part in k for k in keys)

    holds = {
        "missing": lambda p: has(missing, p) and not has(file_keys, p),
        "unexpected": lambda p: has(unexpected, p) and not has(model_keys, p),
        "single": lambda p: any(p in k and k.replace(p, ".") in file_keys for k in missing),
    }
    return ["the file has " + hint for where, part, hint in _HINTS if holds[where](part)]


def _class_mismatch(wrong):
    """What class-dependent tensors ``wrong`` [(key, file shape, model shape)] mean."""
    fits = {}  # per config key, its first tensor (cls_score first)
    for k, c, m in wrong:
        key, classes = next(v for p, v in _CLASS_KEYS.items() if k.startswith(p))
        n_file, n_model = (classes(s[0] if s else 0) for s in (c, m))
        if n_file is not None and n_file != n_model:
            fits.setdefault(key, (k, n_file, n_model))
    text = "; ".join(
        f"{k} has {n} classes in the file, the config {key} {m}: set {key} {n}"
        for key, (k, n, m) in fits.items()
    )
    return text or f"{_names(w[0] for w in wrong)} have other shapes ({wrong[0]})"


class PANetCheckpointer(DetectionCheckpointer):
    """
    Drop-in replacement of :class:`DetectionCheckpointer` (same constructor and methods). Partial
    files left by an interrupted save are removed when it is created.

    Args:
        warm_start (bool): False (default): every tensor of the model must come from the file
            loaded, and a path must be given. True: a warm start for training (MODEL.WEIGHTS):
            new layers and other class counts allowed, "" starts from scratch. Resuming
            (``resume_or_load(..., resume=True)`` with a checkpoint in ``save_dir``) is strict
            in both cases.
    """

    def __init__(
        self, model, save_dir="", *, save_to_disk=None, warm_start=False, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.warm_start = warm_start
        self._loading = None
        if self.save_dir and self.save_to_disk and self.path_manager.isdir(self.save_dir):
            for name in self.path_manager.ls(self.save_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    logger.info(f"Removing {name} left by an interrupted save")
                    self.path_manager.rm(os.path.join(self.save_dir, name))

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save, each file written by :meth:`_write`; refuses the weights of a diverged
        model, and a failed write is one :class:`CheckpointError`."""
        if not self.save_dir or not self.save_to_disk:
            return
        self._check_finite(name)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, name + ".pth")
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            self._write(path, "wb", lambda f: torch.save(data, f))
            self.tag_last_checkpoint(name + ".pth")
        except (OSError, RuntimeError) as e:
            cause = e  # torch.save wraps a failed write in a RuntimeError
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            last = os.path.basename(self.get_checkpoint_file()) if self.has_checkpoint() else ""
            last = ": last_checkpoint names {!r}".format(last) if last else ""
            raise CheckpointError(
                f"Cannot save checkpoint {path!r}: {cause.strerror or cause} (the previous "
                f"checkpoint is intact{last})."
            ) from None

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """fvcore's, written by :meth:`_write`: ``last_checkpoint`` names the old or new file."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        self._write(path, "w", lambda f: f.write(last_filename_basename))

    def _write(self, path, mode, write):
        """Calls ``write(f)`` on ``<path>.partial`` in the same folder, syncs it to the disk and
        renames it over ``path``; a failure removes it and leaves ``path`` as it was."""
        tmp = path + PARTIAL_SUFFIX
        try:
            with self.path_manager.open(tmp, mode) as f:
                write(f)
                if "://" not in path:  # a local file: its bytes on the disk before the rename
                    f.flush()
                    os.fsync(f.fileno())
            if "://" in path:  # another iopath storage, without a rename over a file
                self.path_manager.copy(tmp, path, overwrite=True)
                self.path_manager.rm(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            if self.path_manager.exists(tmp):
                self.path_manager.rm(tmp)
            raise

    def _check_finite(self, name):
        """Refuses to save the weights of a diverged model (NaN or inf)."""
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise TrainingDivergedError(
                f"Not saving checkpoint {name + '.pth'!r}: {len(bad)} tensor(s) of the model "
                f"hold NaN or inf ({_names(bad)}); the last checkpoint is "
                f"{repr(last) if last else 'none'}.",
                last_checkpoint=last,
            )

    def resume_or_load(self, path, *, resume=True):
        """fvcore's: the last checkpoint of ``save_dir`` when ``resume`` and there is one (every
        tensor from it), else ``path`` (model only; a warm start if ``warm_start``)."""
        if resume and self.has_checkpoint():
            warm_start, self.warm_start = self.warm_start, False
            try:
                return self.load(self.get_checkpoint_file())
            finally:
                self.warm_start = warm_start
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
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"Checkpoint {path!r} does not exist (MODEL.WEIGHTS or the checkpoint given to "
                "load). Give a local .pth/.pkl file, a Detectron2 model-zoo URL, or '' to start "
                "from scratch."
            )
        if not path:  # a warm start from scratch (Detectron2 would log "Loading from  ...")
            logger.info("No weights (MODEL.WEIGHTS is empty): random initialisation.")
            return {}
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename):
        """DetectionCheckpointer's formats, each read by :func:`read_checkpoint`."""
        if not filename.endswith((".pkl", ".pyth")):
            loaded = super()._load_file(filename)  # reads with _torch_load; URL queries too
        elif filename.endswith(".pyth"):  # pycls
            data = read_checkpoint(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointError(
                    f"Cannot load .pyth file {filename!r}: pycls checkpoints hold 'model_state'."
                )
            state = data["model_state"]
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            loaded = {"model": state, "__author__": "pycls", "matching_heuristics": True}
        else:
            loaded = read_checkpoint(filename)
            if not isinstance(loaded, dict):
                raise CheckpointError(
                    f"Checkpoint {filename!r} holds a {type(loaded).__name__}, not a dict of "
                    "arrays."
                )
            if "model" in loaded and "__author__" in loaded:  # Detectron2's model zoo
                self.logger.info(f"Reading a file from '{loaded['__author__']}'")
            else:  # Caffe2 / Detectron1 model zoo
                blobs = loaded.get("blobs", loaded)
                if not isinstance(blobs, dict):
                    raise CheckpointError(
                        f"Checkpoint {filename!r} holds no model state dict (its 'blobs' is a "
                        f"{type(blobs).__name__}, not a dict of arrays)."
                    )
                blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
                loaded = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        model = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model, dict):
            found = f"a {type(loaded).__name__}"
            if isinstance(loaded, dict):
                found = f"its 'model' is a {type(model).__name__}"
                found = found if "model" in loaded else f"no 'model' in {_names(map(str, loaded))}"
            raise CheckpointError(
                f"Checkpoint {filename!r} holds no model state dict ({found}, not a dict of "
                "tensors)."
            )
        return loaded

    def _torch_load(self, f):
        return read_checkpoint(f)  # tensors and plain values only: no allow-list needed

    def _load_model(self, checkpoint):
        """
        Detectron2's loading between the checks of the values and the fit: before, every tensor
        that goes into a floating tensor of the model is floating (:meth:`_check_dtypes`); after,
        :meth:`_check_fit` on its report and no NaN or inf in what was loaded
        (:meth:`_check_loaded_finite`). A refused file leaves the model as it was. The file's
        tensor names are noted first: the AFP layers take single-level tensors while loading
        (the AFP warm start), so the report alone does not show them.
        """
        state = checkpoint["model"]
        self._to_tensors(state)
        if checkpoint.get("matching_heuristics", False):  # another code base's names: ours first
            caffe2 = checkpoint.get("__author__") == "Caffe2"
            state = align_and_update_state_dicts(
                self.model.state_dict(), state, c2_conversion=caffe2
            )
            checkpoint.update(model=state, matching_heuristics=False)  # done: D2 skips it
        consume_prefix_in_state_dict_if_present(state, "module.")  # as fvcore does
        file_keys = set(state)
        targets = self._check_dtypes(state)
        before = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        try:
            self._check_fit(incompatible, file_keys)
            self._check_loaded_finite(targets)
        except CheckpointError:
            self.model.load_state_dict(before)
            raise
        return incompatible

    def _to_tensors(self, state):
        """fvcore's conversion of NumPy arrays (in place; another byte order first made native),
        refusing in one line a value that is neither a tensor nor an array."""
        for k, v in list(state.items()):
            if isinstance(v, np.ndarray):
                state[k] = torch.from_numpy(
                    v if v.dtype.isnative else v.astype(v.dtype.newbyteorder("="))
                )
            elif not isinstance(v, torch.Tensor):
                raise CheckpointError(
                    f"Checkpoint {self._loading or 'the checkpoint'!r} was not loaded: its model "
                    f"state holds a {type(v).__name__} as {str(k)[:100]!r}, not a tensor or array."
                )

    def _check_dtypes(self, state):
        """
        Raises :class:`CheckpointError` naming the first tensor of ``state`` that loading would
        put into a floating tensor of the model and that is not floating (an integer or bool,
        which Detectron2 would cast without a word) or not a plain tensor (sparse, meta). Returns
        the model's tensors that get a value: same name and shape, or, for an AFP layer, the
        single-level name of a per-level tensor.
        """
        model = self.model.state_dict()
        singles = {}
        for k in model:
            singles.setdefault(_PER_LEVEL.sub(r"\1", k), k)
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
                raise CheckpointError(
                    f"Checkpoint {self._loading or 'the checkpoint'!r} was not loaded: its tensor "
                    f"{k!r} is {found} where the model's is {ours.dtype}: weights are floating "
                    "point (a file whose weights were cast to integers or bool is damaged; give "
                    "the float one)."
                )
        return list(targets.values())

    def _check_loaded_finite(self, targets):
        """Raises :class:`CheckpointError` naming the first of the model's tensors ``targets``
        (those the file loaded) that holds NaN or inf, how many values, how many such tensors."""
        state, targets = self.model.state_dict(), set(targets)
        bad = []
        for k in (k for k in state if k in targets and state[k].is_floating_point()):
            if torch.isfinite(state[k].sum()):  # NaN and inf carry into a sum (which is fast)
                continue
            n = state[k].numel() - int(torch.isfinite(state[k]).sum())
            if n:  # (not a sum of large values that overflowed)
                bad.append((k, n, state[k].numel()))
        if bad:
            k, n, total = bad[0]
            raise CheckpointError(
                f"Checkpoint {self._loading or 'the checkpoint'!r} was not loaded: its weights "
                f"hold NaN or inf: {k} has {n} of {total} values not finite ({len(bad)} "
                "tensor(s) in all): the weights of a diverged or damaged run; give an earlier "
                "checkpoint."
            )

    def _check_fit(self, incompatible, file_keys):
        """
        Raises :class:`CheckpointError` when the file (its tensor names ``file_keys``, fvcore's
        report ``incompatible``) does not make the model: none of its tensors; a tensor of another
        shape (but the class-dependent predictors of a warm start); without ``warm_start``, any
        tensor of the model missing.
        """
        path = self._loading or "the checkpoint"
        model_keys = list(self.model.state_dict())
        required = [k for k in model_keys if not k.endswith(NOT_REQUIRED_SUFFIXES)]
        if required and not file_keys.intersection(required):
            raise CheckpointError(
                f"Checkpoint {path!r} holds none of the model's {len(required)} tensors (it holds "
                f"{len(file_keys)} tensor(s): {_names(file_keys) or 'nothing'}): it is not a "
                "checkpoint of this model."
            )
        wrong = incompatible.incorrect_shapes
        wrong = [w for w in wrong if not w[0].endswith(NOT_REQUIRED_SUFFIXES)]
        classes = [w for w in wrong if w[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        others = [w for w in wrong if not w[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        missing = [k for k in required if k not in file_keys]
        hints = _hints(missing, incompatible.unexpected_keys, model_keys, file_keys)
        if others:
            listed = "; ".join(
                f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in others[:3]
            )
            listed += f" and {len(others) - 3} more" if len(others) > 3 else ""
            advice = "; ".join(hints) or (
                "was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictors may differ, "
                "when training"
            )
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {len(others)} tensor(s) have other "
                f"shapes: {listed}: {advice}."
            )
        if self.warm_start:
            return
        if classes:
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {_class_mismatch(classes)} "
                f"({len(classes)} class-dependent tensor(s) differ: "
                f"{_names(c[0] for c in classes)}). Only training may start new predictors "
                "(fine-tuning to other classes)."
            )
        if missing:
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {len(missing)} of its "
                f"{len(required)} tensors are not in the file ({_names(missing)})"
                f"{': ' + '; '.join(hints) if hints else ''}. Give the checkpoint of this model, "
                "or the config it was trained with."
            )
