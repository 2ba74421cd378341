# -*- coding: utf-8 -*-
"""
The entry points' shared steps (panet_d2.config.load_config_file, panet_d2.engine.cli): a yacs or
LazyConfig file with options, the CPU fallback of a CUDA config as a note, an InputError as one
"ERROR:" line.
"""

import os

import pytest
import torch

from detectron2.config import CfgNode

from panet_d2.config import load_config_file
from panet_d2.engine import adapt_config_to_machine, one_line_errors
from panet_d2.errors import ConfigError, DatasetError

from ..common import error_exit

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
YACS = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance.yaml")
LAZY = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_lazy.py")


def test_yacs_with_options_and_panet_keys():
    cfg = load_config_file(YACS, ["SOLVER.MAX_ITER", 7, "MODEL.AFP.FUSE_TYPE", "sum"])
    assert isinstance(cfg, CfgNode) and not cfg.is_frozen()
    assert (cfg.SOLVER.MAX_ITER, cfg.MODEL.AFP.FUSE_TYPE) == (7, "sum")


def test_lazyconfig_with_options():
    cfg = load_config_file(LAZY, ["train.max_iter=3"])
    assert not isinstance(cfg, CfgNode) and cfg.train.max_iter == 3
    with pytest.raises(ConfigError) as e:  # yacs only (train_net.py): said, not a YAML error
        load_config_file(LAZY, ["train.max_iter=3"], lazy=False)
    assert str(e.value) == (
        "Config file {!r} (--config-file) is a LazyConfig (.py): this command reads yacs .yaml "
        "configs (tools/lazyconfig_train_net.py trains LazyConfig files).".format(LAZY)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_cuda_falls_back_to_the_cpu_with_a_note():
    cfg = load_config_file(YACS, ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True])
    notes = adapt_config_to_machine(cfg)
    assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED) == ("cpu", False)
    assert notes == [
        "MODEL.DEVICE='cuda': CUDA is not available, running on the CPU.",
        "SOLVER.AMP.ENABLED needs CUDA: training in float32 on cpu",
    ]
    cfg = load_config_file(LAZY, ["train.device=cuda"])
    notes = adapt_config_to_machine(cfg)
    assert cfg.train.device == "cpu"
    assert notes == ["train.device='cuda': CUDA is not available, running on the CPU."]


def test_config_errors_name_the_file_or_options(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"Config file .*nope.yaml.* \(--config-file\) does not"):
        load_config_file(missing)
    with pytest.raises(ConfigError, match=r"command-line options .*MODEL.NO_KEY.*synth_instance"):
        load_config_file(YACS, ["MODEL.NO_KEY", 1])
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ny = (\n")
    with pytest.raises(ConfigError, match=r"broken.py:\d+: SyntaxError"):
        load_config_file(str(broken))


def test_input_errors_as_one_line():
    def refused():
        with one_line_errors():
            raise DatasetError("Dataset 'x'\n  is not registered.")

    assert error_exit(refused) == "ERROR: Dataset 'x' is not registered."  # exit code 2
    with pytest.raises(ValueError):  # not an input error: the traceback stays
        with one_line_errors():
            raise ValueError("a bug")
    with pytest.raises(SystemExit) as e:
        with one_line_errors(FloatingPointError):
            raise FloatingPointError("diverged")
    assert (e.value.code, str(e.value)) == (1, "ERROR: diverged")  # not an input error: 1


def test_base_files_resolved_by_fvcore_and_checked(tmp_path):
    """_BASE_ relative to the file that names it (fvcore's rule); a cycle is found however its
    paths are spelled; a base's problem names the file that names it."""
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "sub" / "a.yaml", tmp_path / "sub" / "b.yaml"
    a.write_text('_BASE_: "../sub/./b.yaml"\n')
    b.write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(ConfigError, match=r"a.yaml' of config file .*b.yaml' inherits from itself"):
        load_config_file(str(a))
    b.write_text('_BASE_: "{}"\nSOLVER:\n  MAX_ITER: 3\n'.format(YACS))
    cfg = load_config_file(str(a), ["SOLVER.BASE_LR", 0.5])
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.MODEL.AFP.ENABLED) == (3, 0.5, True)
