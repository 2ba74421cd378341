# -*- coding: utf-8 -*-
"""
Tests of panet_d2.model_zoo and of how the configs are packaged (setup.py): every config under
configs/ loads by its relative path, from the checkout and from a copy of the tree elsewhere;
the LazyConfig files as Detectron2's model_zoo loads its own; trained=True says what exists.
"""

import glob
import os
import re
import shutil

import pytest
import torch

pytest.importorskip("detectron2")

from omegaconf import DictConfig  # noqa: E402

from detectron2 import model_zoo as d2_model_zoo  # noqa: E402
from detectron2.config import LazyConfig, get_cfg  # noqa: E402

import panet_d2.model_zoo.model_zoo as zoo_module  # noqa: E402
from panet_d2 import add_panet_config, model_zoo  # noqa: E402

from .common import ROOT, load_script  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs")


def _all_configs(root=CONFIGS, ext=(".yaml",)):
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(ext):
                out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return sorted(out)


def _merge(path):
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_configs_exist():
    names = _all_configs()
    assert "Base-PANet.yaml" in names
    assert "quick_schedules/panet_R_18_synth_instance.yaml" in names
    assert "quick_schedules/panet_R_18_synth_instance_smoke.yaml" in names
    lazy = _all_configs(ext=(".py",))
    assert "new_baselines/panet_R_50_FPN_100ep_LSJ.py" in lazy
    assert "quick_schedules/panet_R_18_synth_lazy.py" in lazy
    assert model_zoo.list_configs() == sorted(names + lazy)


@pytest.mark.parametrize("name", _all_configs())
def test_every_config_loads(name):
    path = model_zoo.get_config_file(name)
    assert os.path.isfile(path)
    assert os.path.samefile(path, os.path.join(CONFIGS, name))
    cfg = _merge(path)
    assert cfg.MODEL.ROI_HEADS.NAME == "PANetROIHeads"
    if name.startswith("quick_schedules/"):
        # the quick schedules train from scratch on the generated dataset
        assert cfg.MODEL.WEIGHTS == "" and cfg.INPUT.MASK_FORMAT == "bitmask"
        assert all(n.startswith("panet_synth_train") for n in cfg.DATASETS.TRAIN)
        assert cfg.OUTPUT_DIR.startswith("./output/")
    assert model_zoo.get_config(name).dump() == cfg.dump()


def test_configs_load_from_a_copy_elsewhere(tmp_path, monkeypatch):
    """The configs as an installed package holds them: a copy of the tree, anywhere."""
    package_configs = tmp_path / "site-packages" / "panet_d2" / "model_zoo" / "configs"
    shutil.copytree(CONFIGS, package_configs)
    monkeypatch.setattr(zoo_module, "_PACKAGE_CONFIG_DIR", str(package_configs))
    monkeypatch.setattr(zoo_module, "_SOURCE_CONFIG_DIR", str(tmp_path / "no_checkout"))
    monkeypatch.chdir(tmp_path)
    names = _all_configs(str(package_configs))
    everything = _all_configs(str(package_configs), ext=(".yaml", ".py"))
    assert model_zoo.list_configs() == everything == _all_configs(ext=(".yaml", ".py"))
    lazy = "quick_schedules/panet_R_18_synth_lazy.py"  # its relative import resolves there too
    assert model_zoo.get_config_file(lazy).startswith(str(package_configs))
    assert model_zoo.get_config(lazy).model.roi_heads.num_classes == 3
    for name in names:
        path = model_zoo.get_config_file(name)
        assert path.startswith(str(package_configs))
        assert _merge(path).dump() == _merge(os.path.join(CONFIGS, name)).dump(), name
    # nothing found at all: a clear error
    monkeypatch.setattr(zoo_module, "_PACKAGE_CONFIG_DIR", str(tmp_path / "none"))
    with pytest.raises(RuntimeError, match="configs are not available"):
        model_zoo.get_config_file("Base-PANet.yaml")


def test_errors():
    with pytest.raises(RuntimeError, match="no_such.yaml not available.*Base-PANet.yaml"):
        model_zoo.get_config_file("COCO-InstanceSegmentation/no_such.yaml")
    # configs/ only (tests/test_config_files_are_data.py: a .py elsewhere does not run)
    for path in (os.path.join(CONFIGS, "Base-PANet.yaml"), "../configs/Base-PANet.yaml"):
        with pytest.raises(ValueError, match="relative to PANet's configs/ directory"):
            model_zoo.get_config_file(path)
    assert model_zoo.get_config_file("COCO-Detection/../Base-PANet.yaml").endswith(
        os.path.join("configs", "Base-PANet.yaml")
    )
    with pytest.raises(RuntimeError, match="No trained PANet model"):
        model_zoo.get_config("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml", trained=True)
    with pytest.raises(RuntimeError, match="No trained PANet model"):
        model_zoo.get("quick_schedules/panet_R_18_synth_instance.yaml", trained=True)


def _py(cfg):
    """The LazyConfig's contents, without object addresses (norm lambdas)."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(cfg))


@pytest.mark.parametrize("name", _all_configs(ext=(".py",)))
def test_lazy_configs_as_detectron2_model_zoo(name):
    """A LazyConfig file gives what LazyConfig.load gives, as Detectron2's get_config does for
    its own .py files (a DictConfig with model / dataloader / train / optimizer)."""
    cfg = model_zoo.get_config(name)
    assert isinstance(cfg, DictConfig)
    d2_style = d2_model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    assert set(d2_style) <= set(cfg)  # the same sections as Detectron2's recipe
    expected = LazyConfig.load(os.path.join(CONFIGS, name))
    assert _py(cfg) == _py(expected)
    with pytest.raises(RuntimeError, match="No trained PANet model"):
        model_zoo.get_config(name, trained=True)


def test_get_builds_a_lazyconfig_model():
    import torch

    model = model_zoo.get("quick_schedules/panet_R_18_synth_lazy.py", device="cpu")
    assert isinstance(model, torch.nn.Module) and model.training
    assert type(model.roi_heads).__name__ == "PANetROIHeads"
    assert next(model.parameters()).device.type == "cpu"


RELEASE_CONFIGS = sorted(
    os.path.relpath(p, CONFIGS).replace(os.sep, "/")
    for p in glob.glob(os.path.join(CONFIGS, "*", "panet_*_release_*.yaml"))
)


@pytest.mark.parametrize("name", RELEASE_CONFIGS)
def test_trained_release_config_says_how_to_get_the_weights(name):
    """trained=True on a release config: the authors' model (their README's link) and the
    conversion command, for every release config in configs/."""
    assert name in model_zoo.RELEASE_MODELS
    with pytest.raises(RuntimeError) as e:
        model_zoo.get_config(name, trained=True)
    msg = str(e.value)
    assert "drive.google.com/file/d/" in msg and "ShuLiu1993/PANet" in msg
    assert "python3 tools/convert_panet_release.py model_step*.pth converted.pth" in msg
    assert "MODEL.WEIGHTS" in msg and name in msg
    with pytest.raises(RuntimeError, match="convert_panet_release"):
        model_zoo.get(name, trained=True)
    # the same path written otherwise, and Detectron2's get_checkpoint_url: the same message
    for call in (lambda n: model_zoo.get_config(n, trained=True), model_zoo.get_checkpoint_url):
        with pytest.raises(RuntimeError) as other:
            call("./" + name)
        assert str(other.value) == msg


def test_release_models_are_the_release_readme_rows():
    """The three trained models of the release's README (R-50 det, det 2fc, mask 2x): three
    different links, one per release config (converter's table: tools/convert_panet_release.py)."""
    assert len(RELEASE_CONFIGS) == 3 and sorted(model_zoo.RELEASE_MODELS) == RELEASE_CONFIGS
    urls = [url for _, url in model_zoo.RELEASE_MODELS.values()]
    assert len(set(urls)) == 3
    converter = open(os.path.join(ROOT, "tools", "convert_panet_release.py")).read()
    for name in RELEASE_CONFIGS:
        assert os.path.basename(name) in converter


def test_get_builds_the_model():
    import torch

    model = model_zoo.get("quick_schedules/panet_R_18_synth_instance_smoke.yaml", device="cpu")
    assert isinstance(model, torch.nn.Module) and model.training
    assert type(model.roi_heads).__name__ == "PANetROIHeads"
    assert next(model.parameters()).device.type == "cpu"


def _load_setup_py():
    return load_script("setup.py", "panet_setup")  # setup() itself only runs as __main__


def test_setup_links_or_copies_the_configs(tmp_path):
    setup_py = _load_setup_py()
    dest = tmp_path / "panet_d2" / "model_zoo" / "configs"
    dest.parent.mkdir(parents=True)
    # editable / develop installs: a symlink to <repo>/configs
    files = setup_py.get_model_zoo_configs(CONFIGS, str(dest), link=True)
    assert os.path.islink(dest) and os.path.samefile(dest, CONFIGS)
    assert len(files) == len(_all_configs()) and all(f.endswith(".yaml") for f in files)
    # other installs: a copy, replacing the stale link
    setup_py.get_model_zoo_configs(CONFIGS, str(dest), link=False)
    assert os.path.isdir(dest) and not os.path.islink(dest)
    assert _all_configs(str(dest)) == _all_configs()
    # a stale copy is replaced too
    (dest / "stale.yaml").write_text("MODEL: {}\n")
    setup_py.get_model_zoo_configs(CONFIGS, str(dest), link=False)
    assert not (dest / "stale.yaml").exists()
    # default mode: symlink only for the editable / develop commands
    assert setup_py.EDITABLE_COMMANDS == ("develop", "editable_wheel")


def test_get_refuses_a_device_it_cannot_run_on():
    """``get(..., device=...)`` takes the devices MODEL.DEVICE takes, in one line (torch's long
    RuntimeError before), and an explicit 'cuda' where there is none (torch: "Found no NVIDIA
    driver")."""
    from panet_d2.errors import ConfigError

    config = "quick_schedules/panet_R_18_synth_instance_smoke.yaml"
    with pytest.raises(
        ConfigError, match=r"^device='gpu': panet_d2 runs on 'cpu' \(or 'cpu:0'\), 'cuda'"
    ):
        model_zoo.get(config, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^device='cuda:1': CUDA is not available here"):
            model_zoo.get(config, device="cuda:1")
        with pytest.raises(ConfigError, match=r"^device='cuda': CUDA is not available"):
            model_zoo.get(config, device=torch.device("cuda"))
    for cpu in (torch.device("cpu"), "cpu:0"):  # torch's name of the CPU, too
        assert next(model_zoo.get(config, device=cpu).parameters()).device.type == "cpu"
