# -*- coding: utf-8 -*-
"""
Finds Detectron2's own scripts (``tools/*.py``, ``demo/demo.py``) for ``tools/run_d2_tool.py`` and
``tools/lazyconfig_train_net.py`` (imported by them from this folder; not part of the package).

Where it looks, in order (the first folder that holds the file wins):

1. the folder given by the caller (``--d2-root``), else ``$DETECTRON2_ROOT``: a Detectron2 source
   checkout; when given, nothing else is searched;
2. the folder that holds the installed ``detectron2`` package: a source checkout (editable
   install) or ``site-packages``, where Detectron2's setup.py installs ``tools/`` (not ``demo/``);
3. the source checkout the installed ``detectron2`` was built from: ``pip install <checkout>``
   records it as a ``file://`` URL in the distribution's ``direct_url.json`` (PEP 610).

A file found nowhere raises :class:`Detectron2ToolNotFoundError`, naming every folder looked in.
Only Detectron2's own scripts run: a tool is a name of a file in ``tools/`` (its sub-folders
included: "deploy/export_model") or "demo", never a path (no absolute path, no "..", no "./"); any
other raises :class:`Detectron2ToolNameError`, listing the names found.
"""

import glob
import json
import os
import re
import urllib.parse
import urllib.request
from typing import List, Optional, Tuple

from panet_d2.errors import InputError

__all__ = [
    "ENV_VAR",
    "Detectron2ToolNameError",
    "Detectron2ToolNotFoundError",
    "detectron2_roots",
    "find_detectron2_file",
    "find_detectron2_tool",
    "list_detectron2_tools",
    "tool_relpath",
]

ENV_VAR = "DETECTRON2_ROOT"


class Detectron2ToolNotFoundError(InputError, FileNotFoundError):
    """A script of Detectron2 (``tools/*.py``, ``demo/demo.py``) that is in none of the folders
    :func:`detectron2_roots` lists; the message names them."""


class Detectron2ToolNameError(InputError, ValueError):
    """A tool given as a path (absolute, with "..", ...) instead of the name of one of
    Detectron2's scripts; the message lists the names found."""


# one part of a tool's name: a file or folder name of Detectron2's tools/ (not hidden, private
# or a path step)
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _installed_source_checkout() -> Optional[str]:
    """The local folder the installed ``detectron2`` distribution was built from, from its
    ``direct_url.json`` (``{"url": "file:///path/to/detectron2", ...}``), or None."""
    from importlib import metadata

    try:
        text = metadata.distribution("detectron2").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        url = json.loads(text).get("url", "")
    except ValueError:
        return None
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None  # built from a git URL or an archive: no local checkout
    return urllib.request.url2pathname(parsed.path)


def detectron2_roots(d2_root: Optional[str] = None) -> List[Tuple[str, str]]:
    """
    Args:
        d2_root (str or None): a Detectron2 source checkout given by the user (``--d2-root``);
            None: ``$DETECTRON2_ROOT`` if set.

    Returns:
        list[(str, str)]: the folders to search for ``tools/`` and ``demo/``, in order, each with
        where it comes from (for messages). Only the given folder when one is given.
    """
    if d2_root:
        return [(os.path.abspath(os.path.expanduser(d2_root)), "--d2-root")]
    env = os.environ.get(ENV_VAR)
    if env:
        return [(os.path.abspath(os.path.expanduser(env)), "$" + ENV_VAR)]
    import detectron2

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__)))
    roots = [(package_parent, "the folder of the installed detectron2 package")]
    source = _installed_source_checkout()
    if source and not any(os.path.realpath(source) == os.path.realpath(r) for r, _ in roots):
        roots.append((source, "the source checkout detectron2 was installed from"))
    return roots


def tool_relpath(name: str, d2_root: Optional[str] = None) -> str:
    """
    The path of a Detectron2 script relative to its checkout, from a short name:
    "analyze_model", "analyze_model.py" or "tools/analyze_model.py" -> "tools/analyze_model.py";
    "deploy/export_model" -> "tools/deploy/export_model.py"; "demo" or "demo/demo.py" ->
    "demo/demo.py".

    Raises:
        Detectron2ToolNameError: ``name`` is a path (absolute, "..", "./", a hidden or private
            file), not a name of Detectron2's scripts; the message lists the names found where
            :func:`detectron2_roots` (of ``d2_root``) looks.
    """
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise Detectron2ToolNameError(
            "{!r} is not a name of Detectron2's tools: only Detectron2's own scripts run, by "
            "name (a file of its tools/ without .py, e.g. analyze_model, deploy/export_model, "
            "or demo), not a path. Found: {} (--list).".format(
                name, ", ".join(list_detectron2_tools(d2_root)) or "none"
            )
        )
    rel = "/".join(parts)
    if rel in ("demo", "demo.py", "demo/demo", "demo/demo.py"):
        return "demo/demo.py"
    if rel.startswith("tools/"):
        rel = rel[len("tools/") :]
    if rel.endswith(".py"):
        rel = rel[: -len(".py")]
    return "tools/" + rel + ".py"


def find_detectron2_file(relpath: str, d2_root: Optional[str] = None) -> Optional[str]:
    """
    Returns:
        str or None: ``relpath`` (e.g. "tools/train_net.py") in the first folder of
        :func:`detectron2_roots` that holds it, or None.
    """
    for root, _ in detectron2_roots(d2_root):
        path = os.path.join(root, relpath)
        if os.path.isfile(path):
            return path
    return None


def list_detectron2_tools_by_folder(d2_root: Optional[str] = None):
    """
    Returns:
        list[(str, str, list[str])]: for each folder of :func:`detectron2_roots`: the folder,
        where it comes from, and the short names of the scripts found in it (``tools/*.py``,
        ``tools/deploy/*.py``, "demo"), sorted.
    """
    found = []
    for root, how in detectron2_roots(d2_root):
        names = set()
        for path in glob.glob(os.path.join(root, "tools", "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, os.path.join(root, "tools")).replace(os.sep, "/")
            if not os.path.basename(rel).startswith("_"):
                names.add(rel[: -len(".py")])
        if os.path.isfile(os.path.join(root, "demo", "demo.py")):
            names.add("demo")
        found.append((root, how, sorted(names)))
    return found


def list_detectron2_tools(d2_root: Optional[str] = None) -> List[str]:
    """The short names of the scripts found (``tools/*.py``, ``tools/deploy/*.py``, "demo")."""
    return sorted({n for _, _, names in list_detectron2_tools_by_folder(d2_root) for n in names})


def find_detectron2_tool(name: str, d2_root: Optional[str] = None) -> str:
    """
    Args:
        name (str): a script of Detectron2, as :func:`tool_relpath` takes it.
        d2_root (str or None): see :func:`detectron2_roots`.

    Returns:
        str: the path of the script.

    Raises:
        Detectron2ToolNameError: ``name`` is a path, not a name (:func:`tool_relpath`).
        Detectron2ToolNotFoundError: naming every folder looked in and how to point to a
            Detectron2 checkout.
    """
    relpath = tool_relpath(name, d2_root)
    path = find_detectron2_file(relpath, d2_root)
    if path is not None:
        return path
    looked = "; ".join(
        "{} ({})".format(os.path.join(root, relpath), how)
        for root, how in detectron2_roots(d2_root)
    )
    available = list_detectron2_tools(d2_root)
    msg = "Detectron2's {} was not found. Looked in: {}.".format(relpath, looked)
    if available:
        msg += " Scripts found there: {}.".format(", ".join(available))
    msg += (
        " Pass --d2-root /path/to/detectron2 or set ${} to a Detectron2 source checkout "
        "(it holds tools/ and demo/).".format(ENV_VAR)
    )
    raise Detectron2ToolNotFoundError(msg)
