# -*- coding: utf-8 -*-
"""
The LazyConfig files (configs/new_baselines/*.py, configs/quick_schedules/*.py):

* every file builds a model that trains one step and runs inference on a small image (channel
  widths narrowed as in test_configs.py, structure kept: block counts, heads, norms, switches);
* the LSJ PANet model is the yacs PANet model (panet_R_50_FPN_1x.yaml) with the recipe's options
  and norms, and Detectron2's LSJ Mask R-CNN with PANet's layers only;
* the quick LazyConfig schedule trains and evaluates through Detectron2's own
  tools/lazyconfig_train_net.py (found the way this repository's launcher finds it).
"""

import glob
import json
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from panet_d2.config import instantiate_model
from panet_d2.errors import ConfigError
from panet_d2.modeling.layers import LevelwiseNorm

from .common import CONFIG_DIR, load_script, panet_cfg, run_script, train_step_and_infer

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = os.path.dirname(CONFIG_DIR)
LAZY_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.py"), recursive=True)
)
LSJ_R50 = "new_baselines/panet_R_50_FPN_100ep_LSJ.py"
QUICK = "quick_schedules/panet_R_18_synth_lazy.py"
ENTRY_POINT = os.path.join(ROOT, "tools", "lazyconfig_train_net.py")


def _load(name):
    return LazyConfig.load(os.path.join(CONFIG_DIR, name))


def test_lazy_configs_found():
    expected = {
        "new_baselines/panet_R_{}_FPN_{}ep_LSJ.py".format(d, e)
        for d in (50, 101)
        for e in (100, 200, 400)
    }
    expected |= {"new_baselines/panoptic_panet_R_50_FPN_100ep_LSJ.py", QUICK}
    assert expected <= set(LAZY_CONFIGS)


@pytest.mark.parametrize("depth,epochs", [(d, e) for d in (50, 101) for e in (200, 400)])
def test_long_schedules(depth, epochs):
    """200 / 400 epochs: the 100-epoch file of the same depth, its schedule stretched."""
    base, cfg = _load("new_baselines/panet_R_{}_FPN_100ep_LSJ.py".format(depth)), _load(
        "new_baselines/panet_R_{}_FPN_{}ep_LSJ.py".format(depth, epochs)
    )
    k = epochs // 100
    assert cfg.train.max_iter == k * base.train.max_iter == k * 184375
    assert cfg.lr_multiplier.scheduler.milestones == [
        k * m for m in base.lr_multiplier.scheduler.milestones
    ]
    assert cfg.lr_multiplier.scheduler.num_updates == cfg.train.max_iter
    assert cfg.model.backbone.bottom_up.stages.depth == depth
    assert _plain(cfg.model) == _plain(base.model)


def _plain(node):
    """A config as text; callables (targets, the recipe's norm lambda) by their names."""
    return json.dumps(
        OmegaConf.to_container(node),
        default=lambda o: getattr(o, "__qualname__", type(o).__qualname__),
        sort_keys=True,
    )


class _Narrow:
    """A ResNet block class with a quarter of the channels: same blocks, same counts."""

    def __init__(self, block_class):
        self.block_class = block_class

    def __call__(self, *, in_channels, out_channels, **kwargs):
        if "bottleneck_channels" in kwargs:
            kwargs["bottleneck_channels"] //= 4
        return self.block_class(
            in_channels=in_channels // 4, out_channels=out_channels // 4, **kwargs
        )


def _narrow(cfg):
    """The widths of test_configs.py's NARROW (and its small sampling sizes); layer counts kept."""
    m = cfg.model
    stages = m.backbone.bottom_up.stages
    stages.block_class = _Narrow(BottleneckBlock if stages.depth >= 50 else BasicBlock)
    m.backbone.bottom_up.stem.out_channels = 64 // 4
    m.backbone.out_channels = 64
    m.proposal_generator.head.in_channels = 64
    m.proposal_generator.pre_nms_topk = (200, 200)
    m.proposal_generator.post_nms_topk = (64, 64)
    heads = m.roi_heads
    heads.batch_size_per_image = 32
    heads.box_head.input_shape.channels = heads.mask_head.input_shape.channels = 64
    heads.box_head.conv_dims = [64] * len(heads.box_head.conv_dims)
    heads.box_head.fc_dims = [128] * len(heads.box_head.fc_dims)
    heads.box_predictor.input_shape.channels = 128
    heads.box_predictor.test_topk_per_image = 10
    heads.mask_head.conv_dims = [64] * len(heads.mask_head.conv_dims)
    heads.mask_head.ff_conv_dims = (64, 32)
    if "sem_seg_head" in m:
        m.sem_seg_head.conv_dims = 32
    return cfg


@pytest.mark.parametrize("config", LAZY_CONFIGS)
def test_lazy_config_trains_one_step_and_infers(config):
    cfg = _narrow(_load(config))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    h, w = 64, 96
    panoptic = "sem_seg_head" in cfg.model
    sem_classes = cfg.model.sem_seg_head.num_classes if panoptic else None
    out = train_step_and_infer(model, cfg.model.roi_heads.num_classes, sem_classes, h, w)
    assert out["instances"].image_size == (h, w)
    if panoptic:
        seg, info = out["panoptic_seg"]
        assert seg.shape == (h, w) and isinstance(info, list)
        assert out["sem_seg"].shape == (cfg.model.sem_seg_head.num_classes, h, w)
    # the data side instantiates too (the datasets are read only when the loader is built)
    mapper = instantiate(cfg.dataloader.train.mapper)
    assert mapper.is_train and mapper.recompute_boxes


def _parameter_shapes(model):
    """name -> shape of parameters and buffers; a per-level norm's levels as one norm over all."""
    shapes = {}
    for name, t in model.state_dict().items():
        name = re.sub(r"\.norm\.levels\.\d+\.", ".norm.", name)
        if name.endswith("num_batches_tracked"):
            shapes[name] = ()
            continue
        old = shapes.get(name)
        shapes[name] = tuple(t.shape) if old is None else (old[0] + t.shape[0],) + old[1:]
    return shapes


@pytest.fixture(scope="module")
def lsj_model():
    torch.manual_seed(0)
    return instantiate(_load(LSJ_R50).model)


def test_lsj_model_is_the_yacs_model_with_the_recipes_options_and_norms(lsj_model):
    # Detectron2's recipe as yacs keys of the PANet model: 2-conv RPN, 4conv1fc box head (PANet's
    # heavier head, HHD), SyncBN in the backbone, FPN and BPA, NaiveSyncBatchNorm(stats_mode="N")
    # in the heads' convs, nothing frozen.
    yacs = build_model(
        panet_cfg(
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            # fmt: off
            opts=[
                "MODEL.RPN.CONV_DIMS", [-1, -1],
                "MODEL.ROI_BOX_HEAD.NUM_CONV", 4,
                "MODEL.ROI_BOX_HEAD.NUM_FC", 1,
                "MODEL.BACKBONE.FREEZE_AT", 0,
                "MODEL.RESNETS.NORM", "SyncBN",
                "MODEL.FPN.NORM", "SyncBN",
                "MODEL.PAFPN.NORM", "SyncBN",
                "MODEL.ROI_BOX_HEAD.NORM", "naiveSyncBN_N",
                "MODEL.ROI_MASK_HEAD.NORM", "naiveSyncBN_N",
            ],
            # fmt: on
        )
    )
    assert _parameter_shapes(lsj_model) == _parameter_shapes(yacs)
    lazy_modules, yacs_modules = dict(lsj_model.named_modules()), dict(yacs.named_modules())
    per_level = re.compile(r"\.levels(\.\d+)?$")  # LevelwiseNorm's modules
    assert {per_level.sub("", n) for n in lazy_modules} == set(yacs_modules)
    norm_kinds = {}
    for name, module in lazy_modules.items():
        if isinstance(module, LevelwiseNorm):  # the recipe's callable norm: one per level
            assert len(module.levels) == 4 and isinstance(yacs_modules[name], NaiveSyncBatchNorm)
            continue
        if per_level.search(name):
            name = per_level.sub("", name)
        else:
            assert type(module) is type(yacs_modules[name]), name
        if name.endswith(".norm") and not isinstance(module, torch.nn.ModuleList):
            part = ".".join(name.split(".")[: 1 if name.startswith("backbone.") else 2])
            norm_kinds.setdefault(part, set()).add(
                (type(module).__name__, getattr(module, "_stats_mode", None))
            )
    # the recipe's norms, and the new layers' (BPA, per-level convs, FF convs) are the same
    assert norm_kinds == {
        "backbone": {("SyncBatchNorm", None)},
        "roi_heads.box_head": {("NaiveSyncBatchNorm", "N")},
        "roi_heads.mask_head": {("NaiveSyncBatchNorm", "N")},
    }
    assert all(
        isinstance(
            getattr(lsj_model.backbone, "bpa_{}{}".format(k, i)).norm, torch.nn.SyncBatchNorm
        )
        for k in ("down", "out")
        for i in (3, 4, 5)
    )
    ff = lsj_model.roi_heads.mask_head.fc_fusion
    assert isinstance(ff.conv1.norm, NaiveSyncBatchNorm) and isinstance(
        ff.conv2.norm, NaiveSyncBatchNorm
    )


def test_lsj_model_is_detectron2s_recipe_with_panets_layers(lsj_model):
    torch.manual_seed(0)
    recipe = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    d2 = {k: v.shape for k, v in instantiate(recipe.model).state_dict().items()}
    ours = {k: v.shape for k, v in lsj_model.state_dict().items()}
    assert {k: ours[k] for k in ours if k in d2} == {k: d2[k] for k in d2 if k in ours}
    added = {k for k in ours if k not in d2}
    removed = {k for k in d2 if k not in ours}
    panet_layer = re.compile(
        r"^backbone\.bpa_(down|out)\d\.|\.per_level\.|^roi_heads\.mask_head\.fc_fusion\."
    )
    assert added and all(panet_layer.search(k) for k in added), sorted(added)
    assert {k.rsplit(".", 1)[0].split(".norm")[0] for k in removed} == {
        "roi_heads.box_head.conv1",
        "roi_heads.mask_head.mask_fcn1",
    }
    # ... which became per-level layers: Detectron2's checkpoint warm-starts every level (the
    # AFP warm start, in load_state_dict, so in Detectron2's DetectionCheckpointer too)
    torch.manual_seed(1)
    d2_state = {  # a "trained" Detectron2 model: every tensor differs from ours
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in instantiate(recipe.model).state_dict().items()
    }
    incompatible = lsj_model.load_state_dict(d2_state, strict=False)
    assert not incompatible.unexpected_keys
    # (BatchNorm fills in a missing num_batches_tracked itself)
    assert set(incompatible.missing_keys) == {
        k for k in added if ".per_level." not in k and not k.endswith("num_batches_tracked")
    }
    heads = lsj_model.roi_heads
    for layer, name in (
        (heads.box_head.conv1, "box_head.conv1"),
        (heads.mask_head.mask_fcn1, "mask_head.mask_fcn1"),
    ):
        conv = layer.per_level
        for level in range(4):
            torch.testing.assert_close(
                conv.weight.view(4, 256, 256, 3, 3)[level],
                d2_state["roi_heads." + name + ".weight"],
            )
            for key in ("weight", "bias", "running_mean", "running_var"):
                torch.testing.assert_close(
                    getattr(conv.norm.levels[level], key),
                    d2_state["roi_heads." + name + ".norm." + key],
                )


def test_lazyconfig_yaml_read_as_data_is_what_detectron2_reads(tmp_path):
    """A LazyConfig .yaml file without Python tags: the project's loader (yaml.safe_load, as
    tools/lazyconfig_train_net.py and tools/run_d2_tool.py read it) gives what Detectron2's
    LazyConfig.load gives, with and without keys."""
    from panet_d2.config import lazyconfig_files_as_data, load_lazy_config

    path = str(tmp_path / "cfg.yaml")
    cfg = _load(QUICK)
    plain = {k: v for k, v in OmegaConf.to_container(cfg).items() if k in ("train", "optimizer")}
    plain["optimizer"].pop("params")
    LazyConfig.save(OmegaConf.create(plain, flags={"allow_objects": True}), path)
    expected = LazyConfig.load(path)
    assert OmegaConf.to_container(load_lazy_config(path)) == OmegaConf.to_container(expected)
    with lazyconfig_files_as_data():
        train, optimizer = LazyConfig.load(path, ("train", "optimizer"))
        assert LazyConfig.load(path, "train") == train == expected.train
    assert optimizer.lr == cfg.optimizer.lr and train.output_dir == cfg.train.output_dir


def _entry_point():
    return load_script(ENTRY_POINT, "panet_lazyconfig_train_net")


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    return {k: v for row in rows for k, v in row.items() if k.startswith(("bbox/", "segm/"))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A few iterations of the quick schedule, then evaluation, by lazyconfig_train_net.py."""
    entry = _entry_point()
    script = entry.find_detectron2_script()
    # Detectron2's own script: next to the installed package (its setup.py installs tools/)
    assert script is not None, "Detectron2's tools/lazyconfig_train_net.py not found"
    out = str(tmp_path_factory.mktemp("quick_lazy"))
    pythonpath = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # fmt: off
    proc = run_script(
        script, "--config-file", os.path.join(CONFIG_DIR, QUICK),
        "train.max_iter=4", "dataloader.train.total_batch_size=2",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",  # near-random: AP defined
        "train.output_dir=" + out,
        cwd=out, PYTHONPATH=pythonpath,
    )
    # fmt: on
    assert proc.returncode == 0, (script, proc.stdout[-3000:], proc.stderr[-3000:])
    return entry, script, out


def test_quick_schedule_trains_and_evaluates(quick_run):
    _, script, out = quick_run
    assert {"last_checkpoint", "log.txt", "metrics.json", "model_final.pth"} <= set(os.listdir(out))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "iter: 3 " in log and "copypaste: Task: segm" in log
    assert "Starting training from iteration 0" in log
    metrics = _metrics(out)
    assert {"bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"} <= set(metrics), metrics
    print("trained and evaluated by", script)


def test_a_mistyped_model_key_is_named_among_the_keys_of_that_name():
    """``norm`` is a key of the backbone's nodes too; the one named is the node whose class refused
    it (the mask head's, whose norm is ``conv_norm``), not every ``norm``."""
    cfg = LazyConfig.apply_overrides(_load(LSJ_R50), ["model.roi_heads.mask_head.norm='GN'"])
    assert len([k for k in OmegaConf.to_yaml(cfg.model).split() if k == "norm:"]) > 1
    with pytest.raises(ConfigError) as e:
        instantiate_model(cfg)
    assert str(e.value) == (
        "model.roi_heads.mask_head.norm: BaseMaskRCNNHead takes no argument 'norm'; remove the key "
        "or correct its name."
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.input_format='XYZ'",
            r"^model.input_format='XYZ': one of BGR, RGB, YUV-BT.601, L\.$",
        ),
        ("model.pixel_std=[0.0,1.0,1.0]", r"^model.pixel_mean=.*model.pixel_std=\[0.0, 1.0, 1.0\]"),
        ("model.pixel_mean=[1.0]", r"^cfg.model cannot be built: AssertionError: "),
        (
            "model.roi_heads.box_pooler.output_size=400",
            r"^model.roi_heads.box_pooler.output_size=\(400, 400\): at most 64 \(larger ones",
        ),
        ("model.backbone.bottom_up.stem.norm='foo'", r"^cfg.model cannot be built: KeyError: "),
        (
            "model.proposal_generator.post_nms_topk=[0,0]",
            r"^model.proposal_generator.post_nms_topk\[0\] \(training\)=0: must be an integer >= 1",
        ),
    ],
)
def test_lazyconfig_model_values_checked_as_yacs_keys_are(override, message):
    """The values a yacs config's INPUT.FORMAT, MODEL.PIXEL_* and RPN top-k keys are checked for,
    and Detectron2's refusals while building, as one line (before: exported or run silently, 0
    instances; an error blaming the weights; AssertionError / KeyError tracebacks)."""
    cfg = LazyConfig.apply_overrides(_load(QUICK), [override])
    with pytest.raises(ConfigError, match=message):
        instantiate_model(cfg)


def test_lazyconfig_training_values_checked():
    """lazyconfig_train_net.py's values that Detectron2 takes unchecked: a ZeroDivisionError after
    the first iteration (periods 0), a ValueError / RuntimeError / AssertionError."""
    from panet_d2.config import check_lazy_training_values

    check_lazy_training_values(_load(QUICK))
    for override, message in [
        ("train.checkpointer.period=0", r"^train.checkpointer.period=0: must be an integer >= 1"),
        ("train.log_period=0", r"^train.log_period=0: must be an integer >= 1"),
        ("dataloader.train.num_workers=-1", r"^dataloader.train.num_workers=-1: must be an int"),
        ("train.checkpointer.max_to_keep=-1", r"^train.checkpointer.max_to_keep=-1: None \(all\)"),
        ("lr_multiplier.warmup_length=2.0", r"^lr_multiplier.warmup_length=2.0: a fraction of "),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_lazy_training_values(LazyConfig.apply_overrides(_load(QUICK), [override]))


def test_a_fault_in_a_users_own_model_module_keeps_its_traceback(tmp_path, monkeypatch):
    """A model class of the user's own module that fails its own assertion raises it as it is
    (its traceback shows where); the same class handing Detectron2 a bad value is one line."""
    (tmp_path / "user_model_module.py").write_text(
        "import torch\n"
        "from detectron2.layers import get_norm\n\n\n"
        "class Model(torch.nn.Module):\n"
        "    def __init__(self, norm='BN', channels=8):\n"
        "        super().__init__()\n"
        "        assert channels > 0, 'channels must be positive'\n"
        "        self.norm = get_norm(norm, channels)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"model": {"_target_": "user_model_module.Model"}})
    assert isinstance(instantiate_model(cfg), torch.nn.Module)
    cfg.model.channels = 0
    with pytest.raises(AssertionError, match="^channels must be positive$"):
        instantiate_model(cfg)
    cfg.model.channels, cfg.model.norm = 8, "foo"  # Detectron2's KeyError
    with pytest.raises(ConfigError, match="^cfg.model cannot be built: KeyError: "):
        instantiate_model(cfg)
