"""What ``torch.jit.script`` needs from modules with layers in Python lists (docs/design.md)."""

import copy
from collections import OrderedDict
from typing import Iterable

from torch import nn

_PREFIX = "_scripting_list_"  # of the ModuleLists allocated by add_scripting_lists


def add_scripting_lists(module: nn.Module, names: Iterable[str]):
    """In ``__init__``: an empty ModuleList (in no state_dict) per list ``names``, for the copy."""
    for name in names:
        module.__dict__[_PREFIX + name] = nn.ModuleList()


# UPSTREAM-WORKAROUND scripting-memo-ids: torch 2.14 torch.jit.script remembers prepared modules by
# id(); Detectron2 0.6 (export/torchscript_patch.py) frees a prepared deep copy of the ResNet.
def scriptable_copy(module: nn.Module, lists: Iterable[str], drop_children: Iterable[str] = ()):
    """A shallow copy for ``__prepare_scriptable__``: ``lists`` as ModuleLists, less children."""
    drop, ret = set(drop_children), copy.copy(module)  # ret: a new __dict__, the same values
    ret._modules = OrderedDict((k, v) for k, v in module._modules.items() if k not in drop)
    for name in lists:
        if name in ret._modules:  # already a ModuleList: ``module`` is a prepared copy
            continue
        layers, module_list = ret.__dict__.pop(name), ret.__dict__.pop(_PREFIX + name)
        module_list._modules.clear()
        module_list._modules.update((str(k), layer) for k, layer in enumerate(layers))
        ret._modules[name] = module_list
    for name in list(ret.__dict__):
        if name.startswith(_PREFIX):
            del ret.__dict__[name]
    return ret
