# -*- coding: utf-8 -*-
import logging
import os
import sys

import pytest
import torch

# Tests import the package from this checkout (also without `pip install -e .`).
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from .common import load_script  # noqa: E402  (the checkout's package, from the path above)

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist (./run.sh test): the cores shared
    # by the workers, as oversubscribed OpenMP threads slow each other down (docs/benchmarks.md)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# In-repo data (assets/): real COCO panoptic samples and demo photos (licenses in assets/README.md).
SHARED_DATA = os.path.join(ROOT, "assets")


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.fail("assets/ not found in the checkout: " + SHARED_DATA)
    return SHARED_DATA


@pytest.fixture(scope="module")
def train_net():
    """train_net.py as a module, imported anew for each test module that asks for it."""
    return load_script("train_net.py", "panet_train_net")


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module that trains: on a small shared machine, OpenMP
    oversubscription slows 2 threads down several times."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _project_logs_reach_caplog():
    """
    train_net.py / demo.py tests set up the "panet_d2" and "detectron2" loggers with Detectron2's
    setup_logger, which stops them propagating to the root logger, where pytest's caplog listens:
    let every test see the project's log records whatever ran before it.
    """
    loggers = [logging.getLogger(name) for name in ("panet_d2", "detectron2", "fvcore")]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    yield
    for lg, p in zip(loggers, saved):
        lg.propagate = p
    # a handler that setup_logger made in a test with capsys writes to its closed stream later
    for lg in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
        for handler in list(getattr(lg, "handlers", ())):
            if getattr(getattr(handler, "stream", None), "closed", False):
                lg.removeHandler(handler)
