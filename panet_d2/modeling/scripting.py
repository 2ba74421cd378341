# -*- coding: utf-8 -*-
"""
What ``torch.jit.script`` needs from modules that keep their layers in Python lists.

Detectron2's heads keep their layers in Python lists (``conv_norm_relus``, ``scale_heads``, FPN's
``lateral_convs``) next to named children (``mask_fcn1``, ``p2``, ``fpn_lateral2``: the names of
the parameters in checkpoints). TorchScript iterates ModuleLists only, so a module gives
``torch.jit.script`` a copy of itself with ModuleLists, through ``__prepare_scriptable__``, as
Detectron2 does for its FPN and ResNet (``detectron2.export.torchscript_patch``).

Here the copy is shallow and its ModuleLists are allocated with the module, not during scripting:
``torch.jit.script`` remembers prepared modules by ``id()``, and Detectron2's own preparation of
FPN frees a deep copy of the ResNet it has just remembered; a module allocated after that may get
the freed address and be taken for the prepared ResNet (scripting then fails at random, e.g.
"Expected at most 2 arguments" for a layer that is not the one called). Allocating nothing that
the recursion visits keeps every remembered id alive.
"""

import copy
from collections import OrderedDict
from typing import Iterable

from torch import nn

__all__ = ["add_scripting_lists", "scriptable_copy"]


def _key(name: str) -> str:
    return "_scripting_list_" + name


def add_scripting_lists(module: nn.Module, names: Iterable[str]):
    """
    Allocate, outside the module's children (so in no state_dict), one empty ModuleList per Python
    list of layers ``names``, for :func:`scriptable_copy`. Call it in ``__init__``.
    """
    for name in names:
        module.__dict__[_key(name)] = nn.ModuleList()


def scriptable_copy(module: nn.Module, lists: Iterable[str], drop_children: Iterable[str] = ()):
    """
    A shallow copy of ``module`` for ``__prepare_scriptable__``: each Python list of layers in
    ``lists`` becomes a child ModuleList (filled with the list's current layers), and the
    children ``drop_children`` (the same layers under their checkpoint names) are left out.
    The layers themselves are shared with ``module``, which is left unchanged. (``torch.jit.script``
    puts the copies in place of the modules in their parents, as it does with Detectron2's FPN, so
    a model scripted in place keeps working, with these names, and scripts again.)
    """
    drop = set(drop_children)
    ret = copy.copy(module)  # a new __dict__ holding the same values
    ret._modules = OrderedDict((k, v) for k, v in module._modules.items() if k not in drop)
    for name in lists:
        if name in ret._modules:  # already a ModuleList: ``module`` is a prepared copy
            continue
        layers = ret.__dict__.pop(name)
        module_list = ret.__dict__.pop(_key(name), None)
        if module_list is None:  # a module made without add_scripting_lists
            module_list = nn.ModuleList()
        module_list._modules.clear()
        for k, layer in enumerate(layers):
            module_list._modules[str(k)] = layer
        ret._modules[name] = module_list
    for name in list(ret.__dict__):
        if name.startswith(_key("")):
            del ret.__dict__[name]
    return ret
