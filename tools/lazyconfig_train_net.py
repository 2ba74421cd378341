#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Runs Detectron2's own ``tools/lazyconfig_train_net.py`` on panet_d2's LazyConfig files, with this
checkout on ``PYTHONPATH``.

Nothing has to be registered first: panet_d2's LazyConfig files (``configs/new_baselines/*.py``,
``configs/quick_schedules/*.py``) import panet_d2, so Detectron2's script trains and evaluates
them as they are. This launcher only finds that script for a user who runs from this checkout:

    python3 tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/new_baselines/panet_R_50_FPN_100ep_LSJ.py

It looks for ``$DETECTRON2_LAZYCONFIG_TRAIN_NET``, else ``tools/lazyconfig_train_net.py`` next to
the ``detectron2`` package (a source checkout, or ``site-packages/tools`` where Detectron2's
setup.py installed its tools), and takes the same command line.
"""

import os
import sys

import detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_VAR = "DETECTRON2_LAZYCONFIG_TRAIN_NET"


def find_detectron2_script():
    """
    Returns:
        str or None: Detectron2's ``lazyconfig_train_net.py``: ``$DETECTRON2_LAZYCONFIG_TRAIN_NET``
        (which must exist when set), else ``tools/lazyconfig_train_net.py`` next to the
        ``detectron2`` package, else None.
    """
    path = os.environ.get(ENV_VAR)
    if path:
        if not os.path.isfile(path):
            sys.exit("ERROR: ${}={!r} is not a file.".format(ENV_VAR, path))
        return path
    root = os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__)))
    path = os.path.join(root, "tools", "lazyconfig_train_net.py")
    return path if os.path.isfile(path) else None


def main():
    script = find_detectron2_script()
    if script is None:
        sys.exit(
            "ERROR: Detectron2's tools/lazyconfig_train_net.py was not found next to the "
            "detectron2 package ({}); set ${} to the file in your Detectron2 checkout.".format(
                os.path.dirname(detectron2.__file__), ENV_VAR
            )
        )
    # this process becomes Detectron2's script, with the same arguments
    path = [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    os.execv(sys.executable, [sys.executable, script] + sys.argv[1:])


if __name__ == "__main__":
    main()
