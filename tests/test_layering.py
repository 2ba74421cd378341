# -*- coding: utf-8 -*-
"""
The package's imports run one way (parsed with ``ast``, not imported):
errors, compat <- config <- modeling (and checkpoint) <- data <- evaluation <- engine (and
model_zoo) <- the package's ``__init__``; the analysis tools depend on the model only.
No function-level import of the package (one that would dodge a cycle).
"""

import ast
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGE = os.path.join(ROOT, "panet_d2")

# the top-level part of panet_d2 -> its layer; a module imports from lower layers (and its own
# part) only
LAYERS = {
    "errors": 0,
    "compat": 0,
    "config": 1,
    "modeling": 2,
    "checkpoint": 2,
    "data": 3,
    "evaluation": 4,
    "engine": 5,
    "model_zoo": 5,
    "__init__": 6,
}
# these depend on the model (and the layers below it) only
MODEL_ONLY = ("analysis",)


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                yield path, rel


def _imports(path, rel):
    """(the absolute panet_d2 module imported, whether at module level) of each import."""
    tree = ast.parse(open(path).read(), path)
    package = rel[:-1]
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)

    def walk(node, top_level):
        for child in ast.iter_child_nodes(node):
            yield child, top_level
            yield from walk(child, top_level and not isinstance(child, scopes))

    for node, top_level in walk(tree, True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "panet_d2":
                    yield alias.name, top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "panet_d2":
                continue
            if name == "panet_d2":  # from panet_d2 import x / from . import x
                for alias in node.names:
                    yield "panet_d2." + alias.name, top_level
            else:
                yield name, top_level


def _part(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _violations():
    for path, rel in _modules():
        part = _part(".".join(rel)) if rel != ["panet_d2", "__init__"] else "__init__"
        for name, top_level in _imports(path, rel):
            where = "{} imports {}".format("/".join(rel) + ".py", name)
            if not top_level:
                yield where + " inside a function or class"
                continue
            target = _part(name)
            if target == part:
                continue
            if part in MODEL_ONLY:
                if LAYERS.get(target, 99) > LAYERS["modeling"]:
                    yield where + ": it depends on the model only"
            elif target in MODEL_ONLY:
                if part != "__init__" and part not in ("engine", "model_zoo"):
                    yield where + ": only scripts and the engine use it"
            elif LAYERS[target] >= LAYERS[part]:
                yield where + ": against the layers"


def test_imports_run_one_way():
    assert list(_violations()) == []


def test_every_part_has_a_layer():
    parts = {_part(".".join(rel)) for _, rel in _modules()}
    assert parts <= set(LAYERS) | set(MODEL_ONLY), parts - set(LAYERS) - set(MODEL_ONLY)


def test_the_checker_sees_violations(tmp_path):
    # the parser resolves relative imports and finds function-level ones
    path = tmp_path / "m.py"
    path.write_text("from ..engine import x\n\ndef f():\n    from . import y\n")
    found = list(_imports(str(path), ["panet_d2", "modeling", "m"]))
    assert found == [("panet_d2.engine", True), ("panet_d2.modeling", False)]


def test_no_function_over_80_lines():
    """Anywhere in the repository: the package, tools, benchmarks, tests and the scripts."""
    long = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "fixtures")]
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if node.end_lineno - node.lineno + 1 > 80:
                        rel = os.path.relpath(path, ROOT)
                        long.append("{}:{} {}".format(rel, node.lineno, node.name))
    assert long == []
