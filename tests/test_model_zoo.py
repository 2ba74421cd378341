# -*- coding: utf-8 -*-
"""
Tests of panet_d2.model_zoo and of how the configs are packaged (setup.py): every config under
configs/ loads by its relative path, from the checkout and from a copy of the tree elsewhere.
"""

import importlib.util
import os
import shutil

import pytest

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402

import panet_d2.model_zoo.model_zoo as zoo_module  # noqa: E402
from panet_d2 import add_panet_config, model_zoo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _all_configs(root=CONFIGS):
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".yaml"):
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
    assert model_zoo.list_configs() == names


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
    assert model_zoo.list_configs() == names == _all_configs()
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
    with pytest.raises(RuntimeError, match="No trained PANet model"):
        model_zoo.get_config("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml", trained=True)
    with pytest.raises(RuntimeError, match="No trained PANet model"):
        model_zoo.get("quick_schedules/panet_R_18_synth_instance.yaml", trained=True)


def test_get_builds_the_model():
    import torch

    model = model_zoo.get("quick_schedules/panet_R_18_synth_instance_smoke.yaml", device="cpu")
    assert isinstance(model, torch.nn.Module) and model.training
    assert type(model.roi_heads).__name__ == "PANetROIHeads"
    assert next(model.parameters()).device.type == "cpu"


def _load_setup_py():
    spec = importlib.util.spec_from_file_location("panet_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


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
