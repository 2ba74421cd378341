#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Runs Detectron2's own ``tools/lazyconfig_train_net.py`` on panet_d2's LazyConfig files, with this
checkout on ``PYTHONPATH``.

Nothing has to be registered first: panet_d2's LazyConfig files (``configs/new_baselines/*.py``,
``configs/quick_schedules/*.py``) import panet_d2, so Detectron2's script trains and evaluates
them as they are. This launcher finds that script for a user who runs from this checkout:

    python3 tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/new_baselines/panet_R_50_FPN_100ep_LSJ.py

It takes ``$DETECTRON2_LAZYCONFIG_TRAIN_NET`` (the script itself) if set, else finds
``tools/lazyconfig_train_net.py`` as ``tools/run_d2_tool.py`` finds Detectron2's tools
(``tools/d2_tools.py``: ``--d2-root DIR`` given first, ``$DETECTRON2_ROOT``, next to the
``detectron2`` package, the checkout it was installed from), and takes the same command line.

The script runs in this process as ``tools/run_d2_tool.py lazyconfig_train_net`` runs it (that
command's environment), so the config is read as the project's entry points read theirs:

* a LazyConfig ``.py`` file is Python code, run as it loads (as in Detectron2): give only a
  file you trust, by its path (``--config-file``); a syntax error in it (or in a file it
  imports) is one line "ERROR: Config file <file>:<line>: SyntaxError: ...";
* a LazyConfig ``.yaml`` file (e.g. a run's saved ``config.yaml``) is data: read with
  ``yaml.safe_load`` where Detectron2 uses PyYAML's unsafe loader; a Python tag, or YAML aliases
  that stand for more than 10,000 values, are refused in one line naming the file, before
  anything runs
  (``panet_d2.config.lazyconfig_files_as_data``);
* an option whose key the config has not, and the training values Detectron2's script takes
  unchecked (``train.max_iter`` and ``dataloader.train.total_batch_size`` >= 1, ``optimizer.lr``
  >= 0, the box predictor's test thresholds in [0, 1]), are one line each
  (``panet_d2.config.check_lazy_training_values``).
"""

import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
for _path in (ROOT, TOOLS):  # the package; d2_tools.py next to this file (also when imported)
    if _path not in sys.path:
        sys.path.insert(0, _path)

import d2_tools

from panet_d2.engine.cli import one_line_errors
from panet_d2.errors import ConfigError

ENV_VAR = "DETECTRON2_LAZYCONFIG_TRAIN_NET"
RELPATH = "tools/lazyconfig_train_net.py"


def find_detectron2_script(d2_root=None):
    """
    Returns:
        str or None: Detectron2's ``lazyconfig_train_net.py``: ``$DETECTRON2_LAZYCONFIG_TRAIN_NET``
        (which must exist when set), else the first found by ``d2_tools``, else None.
    """
    path = os.environ.get(ENV_VAR)
    if path:
        if not os.path.isfile(path):
            raise ConfigError("${}={!r} is not a file.".format(ENV_VAR, path))
        return path
    return d2_tools.find_detectron2_file(RELPATH, d2_root)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    d2_root = None
    if argv[:1] == ["--d2-root"] and len(argv) > 1:
        d2_root, argv = argv[1], argv[2:]
    with one_line_errors():  # exit code 2
        script = find_detectron2_script(d2_root)
        if script is None:
            try:
                d2_tools.find_detectron2_tool(RELPATH, d2_root)  # raises, naming where it looked
            except d2_tools.Detectron2ToolNotFoundError as e:
                raise type(e)("{} Or set ${} to the script itself.".format(e, ENV_VAR)) from None
    # the script's child processes (data loaders, launch) import panet_d2 from this checkout too
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in path if p != ROOT])
    import run_d2_tool

    return run_d2_tool.run_found_tool(script, argv)


if __name__ == "__main__":
    main()  # pragma: no cover
