#!/usr/bin/env python
"""
panet_d2: PANet and panoptic PANet as a Detectron2 project.

Detectron2 and panopticapi are not on PyPI: install them from their repositories first (README).
torch and torchvision are not listed, so that installing this package never reinstalls torch.

The model-zoo configs: the canonical files are in <repo>/configs. At build time they are linked
(editable / develop installs) or copied (other installs) to panet_d2/model_zoo/configs, and
shipped as package data, so that panet_d2.model_zoo finds them from anywhere (as Detectron2's
setup.py does for detectron2/model_zoo/configs).
"""

import glob
import os
import shutil
import sys
from os import path
from typing import List

from setuptools import find_packages, setup

# setup.py commands of editable / develop installs (pip install -e . runs "editable_wheel")
EDITABLE_COMMANDS = ("develop", "editable_wheel")


def get_model_zoo_configs(source=None, destination=None, link=None) -> List[str]:
    """
    Link or copy <repo>/configs to panet_d2/model_zoo/configs (replacing a stale link or copy)
    and return the paths of the config files.

    Args:
        source, destination (str or None): default <repo>/configs and
            <repo>/panet_d2/model_zoo/configs.
        link (bool or None): symlink (True) or copy (False); default: symlink for editable /
            develop installs, copy otherwise. A failed symlink (e.g. on Windows) falls back to a
            copy.
    """
    root = path.dirname(path.realpath(__file__))
    source = source or path.join(root, "configs")
    destination = destination or path.join(root, "panet_d2", "model_zoo", "configs")
    if link is None:
        link = any(cmd in sys.argv[1:] for cmd in EDITABLE_COMMANDS)

    # Remove a stale symlink/directory from a previous build.
    if path.exists(source):
        if path.islink(destination):
            os.unlink(destination)
        elif path.isdir(destination):
            shutil.rmtree(destination)

    if not path.exists(destination):
        copied = False
        if link:
            try:
                os.symlink(source, destination)
                copied = True
            except OSError:
                pass  # fall back to copying
        if not copied:
            shutil.copytree(source, destination)

    return sorted(glob.glob(path.join(source, "**", "*.yaml"), recursive=True))


if __name__ == "__main__":
    get_model_zoo_configs()
    setup(
        name="panet_d2",
        version="0.1.0",
        description="Path Aggregation Network (PANet) and panoptic PANet on Detectron2",
        packages=find_packages(exclude=("tests", "tests.*", "configs", "benchmarks", "tools")),
        package_data={
            "panet_d2": [
                "model_zoo/configs/**/*.yaml",
                "model_zoo/configs/*.yaml",
                "model_zoo/configs/**/*.py",  # LazyConfig files
            ]
        },
        include_package_data=True,
        python_requires=">=3.8",
        install_requires=[
            # "detectron2" and "panopticapi": install from their repositories (see README).
            "fvcore",
            "iopath",
            "pycocotools",
            "opencv-python-headless",
            "numpy",
            "Pillow",
            "tqdm",
            "matplotlib",  # tools/analyze_level_usage.py (Fig. 3)
            "psutil",  # Detectron2's tools/benchmark.py (tools/run_d2_tool.py benchmark)
        ],
        extras_require={
            # shapely: Detectron2's Cityscapes instance loader (polygons from the json files)
            "cityscapes": ["cityscapesscripts", "shapely"],
            # tests and lint (as Detectron2's dev/linter.sh; versions pinned so that .ci/run's
            # formatting check does not change with a new release)
            "dev": ["pytest", "pytest-xdist", "black==26.10.1", "isort==9.0.2", "flake8==7.5.0"],
            # ONNX export and ONNX Runtime (tools/export_model.py --format onnx, its tests);
            # OpenVINO (--format openvino, --precision bf16 / int8: ONNX Runtime's quantiser)
            "export": ["onnx", "onnxruntime", "openvino"],
        },
    )
