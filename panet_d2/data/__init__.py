# -*- coding: utf-8 -*-
"""Datasets and dataset mappers of panet_d2. Importing this registers the generated dataset."""
from . import synthetic as _synthetic  # registers the generated dataset
