#!/usr/bin/env python
"""
panet_d2: PANet and panoptic PANet as a Detectron2 project.

Detectron2 and panopticapi are not on PyPI: install them from their repositories first (README).
torch and torchvision are not listed, so that installing this package never reinstalls torch.
"""
from setuptools import find_packages, setup

setup(
    name="panet_d2",
    version="0.1.0",
    description="Path Aggregation Network (PANet) and panoptic PANet on Detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "benchmarks", "tools")),
    package_data={"panet_d2": ["model_zoo/configs/**/*.yaml", "model_zoo/configs/*.yaml"]},
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
    ],
    extras_require={
        "cityscapes": ["cityscapesscripts"],
        "dev": ["pytest"],
    },
)
