# -*- coding: utf-8 -*-
"""
The configs that reproduce the paper's tables: each ablation row differs from its predecessor in
the component the row names and in nothing else; the full paper model; the release recipe; the
Cityscapes rows and their COCO warm start.
"""

import errno
import os

import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.utils.file_io import PathManager

from panet_d2 import AdaptiveFeaturePooler, AFPConv2d, AFPLinear

from .common import (
    CONFIG_DIR,
    FileProxy,
    error_exit,
    load_script,
    panet_cfg,
    run_script,
    start_script,
)
from .test_configs import NARROW

ROOT = os.path.dirname(CONFIG_DIR)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, FrozenBatchNorm2d)


def _cfg(config):
    return panet_cfg(config, opts=NARROW)


def _modules(config):
    """
    {module name: (class name, {own parameter/buffer name: shape}, module)} of the config's model;
    a fusing module's class name carries its fusion op (max / sum / product).
    """
    cfg = _cfg(config)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):  # structure and shapes: no weights to initialise
        model = build_model(cfg)
    out = {}
    for name, m in model.named_modules():
        own = {k: tuple(v.shape) for k, v in list(m.named_parameters(recurse=False))}
        own.update({k: tuple(v.shape) for k, v in m.named_buffers(recurse=False)})
        out[name] = (type(m).__name__ + ":" + str(getattr(m, "fuse_type", "")), own, m)
    return out


def _diff(a, b):
    """Names of the modules that differ (added, removed, other class or other own tensors)."""
    names = set(a) | set(b)
    return {n for n in names if n not in a or n not in b or a[n][:2] != b[n][:2]}


def _under(prefixes):
    return lambda name, a, b: name.startswith(prefixes)


def _is_norm_change(name, a, b):
    # MBN: the module is a norm, or gained / lost a norm child (its bias goes with a norm), or a
    # Linear became Detectron2's Linear + norm (NormLinear).
    for side in (a, b):
        m = side.get(name, (None, None, None))[2]
        if isinstance(m, NORMS) or (m is not None and isinstance(getattr(m, "norm", None), NORMS)):
            return True
    return name.endswith(".norm") or ".norm." in name


# AFP: the all-level poolers and the per-level first layers (fc1's ReLU moves into the layer)
AFP = (
    "roi_heads.box_pooler",
    "roi_heads.mask_pooler",
    "roi_heads.box_head.fc1",
    "roi_heads.box_head.fc_relu1",
    "roi_heads.mask_head.mask_fcn1",
)
HEADS = ("roi_heads.box_head", "roi_heads.mask_head")
# (row file, predecessor file, test that every differing module belongs to the row's component)
ABL = "ablations/"
TABLE_ROWS = [
    ("rbl.yaml", None, None),
    ("mst.yaml", "rbl.yaml", None),  # input sizes only: no module differs
    ("mst_mbn.yaml", "mst.yaml", _is_norm_change),
    # the backbone itself: FPN -> PAFPN (same FPN children)
    (
        "mst_mbn_bpa.yaml",
        "mst_mbn.yaml",
        lambda n, a, b: n == "backbone" or n.startswith("backbone.bpa_"),
    ),
    ("mst_mbn_afp.yaml", "mst_mbn.yaml", _under(AFP)),
    ("mst_mbn_bpa_afp.yaml", "mst_mbn_bpa.yaml", _under(AFP)),
    ("mst_mbn_bpa_afp_ff.yaml", "mst_mbn_bpa_afp.yaml", _under(("roi_heads.mask_head.fc_fusion",))),
    ("mst_mbn_bpa_afp_ff_hhd.yaml", "mst_mbn_bpa_afp_ff.yaml", _under(("roi_heads.box_head.",))),
]
# Table 4 (fusion position / op) and Table 5 (FF) rows against their base, MST+MBN+BPA+AFP
TABLE_ROWS += [
    # the heads' fusion op and position, and the per-level first layers
    (name, "mst_mbn_bpa_afp.yaml", lambda n, a, b: n in HEADS or n.startswith(AFP[2:]))
    for name in ("afp_before_fc1_max.yaml", "afp_before_fc1_sum.yaml", "afp_after_fc1_sum.yaml")
]
TABLE_ROWS += [
    (
        "ff_conv{}_{}.yaml".format(k, op),
        "mst_mbn_bpa_afp.yaml",
        _under(("roi_heads.mask_head.fc_fusion",)),
    )
    for k in (2, 3, 4)
    for op in ("max", "sum", "product")
]


@pytest.mark.parametrize(
    "row,base,belongs", [r for r in TABLE_ROWS if r[1]], ids=[r[0] for r in TABLE_ROWS if r[1]]
)
def test_ablation_row_differs_from_its_predecessor_only_in_its_component(row, base, belongs):
    a, b = _modules(ABL + base), _modules(ABL + row)
    diff = _diff(a, b)
    if belongs is None:  # MST: same modules, other input sizes
        assert not diff
        assert _cfg(ABL + row).INPUT != _cfg(ABL + base).INPUT
        return
    assert diff, "the row {} adds nothing to {}".format(row, base)
    stray = sorted(n for n in diff if not belongs(n, a, b))
    assert not stray, stray


def test_mbn_puts_a_norm_after_every_new_layer():
    modules = _modules(ABL + "mst_mbn_bpa_afp_ff_hhd.yaml")
    model_modules = {n: m for n, (_, _, m) in modules.items()}
    # every conv / fc of FPN, the bottom-up path, the box head, the mask head (per-level conv1 and
    # FF's convs included) carries a norm; not the predictors, the deconv or Detectron2's RPN
    new_layers = [
        n
        for n, m in model_modules.items()
        if n.startswith(
            ("backbone.fpn_", "backbone.bpa_", "roi_heads.box_head.", "roi_heads.mask_head.")
        )
        and isinstance(m, (nn.Conv2d, nn.Linear))
        and "predictor" not in n
        and "deconv" not in n
        and n != "roi_heads.mask_head.fc_fusion.fc"
        and not n.endswith(".per_level")
    ]
    per_level = [n for n, m in model_modules.items() if isinstance(m, (AFPConv2d, AFPLinear))]
    assert len(new_layers) > 15 and per_level
    for n in new_layers:
        assert isinstance(getattr(model_modules[n], "norm", None), NORMS), n
    for n in per_level:
        layer = model_modules[n]
        norm = getattr(layer, "norm", None) or getattr(layer.per_level, "norm", None)
        assert isinstance(norm, NORMS), n
    # AFP before fc1 (fu.fc1fc2, Table 4) keeps a norm after the (shared) fc1, as fc1fu.fc2 does
    before = {n: m for n, (_, _, m) in _modules(ABL + "afp_before_fc1_max.yaml").items()}
    assert isinstance(before["roi_heads.box_head.fc1"].norm, NORMS)
    assert isinstance(before["roi_heads.box_head.fc2"].norm, NORMS)


def test_paper_config_is_the_full_panet_row():
    cfg = _cfg("COCO-InstanceSegmentation/panet_R_50_FPN_paper.yaml")
    row = _cfg(ABL + "mst_mbn_bpa_afp_ff_hhd.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_pafpn_backbone" and cfg.MODEL.AFP.ENABLED
    assert (
        cfg.MODEL.FF.ENABLED
        and cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4
        and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    )
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.INPUT.MAX_SIZE_TRAIN == 1400
    # same model as the table's last row
    a = _modules("COCO-InstanceSegmentation/panet_R_50_FPN_paper.yaml")
    assert not _diff(a, _modules(ABL + "mst_mbn_bpa_afp_ff_hhd.yaml"))
    assert row.INPUT.MIN_SIZE_TRAIN == cfg.INPUT.MIN_SIZE_TRAIN
    two_fc = _cfg("COCO-InstanceSegmentation/panet_R_50_FPN_paper_2fc.yaml")
    assert two_fc.MODEL.ROI_BOX_HEAD.NUM_CONV == 0 and two_fc.MODEL.ROI_BOX_HEAD.NUM_FC == 2


def test_release_recipe():
    cfg = _cfg("COCO-InstanceSegmentation/panet_R_50_FPN_release_2x.yaml")
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1000, 1400)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (1200, 1200, 1000, 800, 600, 400)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert (cfg.SOLVER.WARMUP_ITERS, round(cfg.SOLVER.WARMUP_FACTOR, 4)) == (500, 0.3333)
    assert cfg.MODEL.AFP.POOLER_SAMPLING_RATIO == 2
    model = build_model(cfg)
    fc = model.roi_heads.mask_head.fc_fusion.fc
    # normal(0, 0.01) as the release, not Detectron2's xavier fill (std ~ sqrt(1 / fan_in) ~ 0.005)
    assert abs(fc.weight.std().item() - 0.01) < 1e-3 and fc.bias.abs().sum() == 0
    assert model.roi_heads.mask_head.fc_fusion.fc_activation
    assert isinstance(model.roi_heads.box_head.conv1, AFPConv2d)
    assert isinstance(model.roi_heads.box_head.conv1.per_level.norm, nn.GroupNorm)


def test_cityscapes_table9_rows():
    base = _modules("Cityscapes/mask_rcnn_R_50_FPN_mbn.yaml")
    panet = _modules("Cityscapes/panet_R_50_FPN.yaml")
    assert isinstance(base["roi_heads.box_pooler"][2], ROIPooler)
    assert not isinstance(base["roi_heads.box_pooler"][2], AdaptiveFeaturePooler)
    assert isinstance(panet["roi_heads.box_pooler"][2], AdaptiveFeaturePooler)
    # both with MBN: SyncBN in the ResNet and after the new layers
    for modules in (base, panet):
        assert isinstance(modules["backbone.bottom_up.stem.conv1"][2].norm, nn.SyncBatchNorm)
        assert isinstance(modules["roi_heads.box_head.fc2"][2].norm, nn.SyncBatchNorm)
    # the difference is PANet's components only
    stray = [
        n
        for n in _diff(base, panet)
        if n != "backbone"
        and not n.startswith(("backbone.bpa_", "roi_heads.mask_head.fc_fusion") + AFP)
    ]
    assert not stray, stray


def test_coco_checkpoint_to_cityscapes(tmp_path):
    coco = build_model(_cfg("COCO-InstanceSegmentation/panet_R_50_FPN_paper_2fc.yaml"))
    path = tmp_path / "coco.pth"
    torch.save({"model": coco.state_dict()}, str(path))
    out = tmp_path / "cityscapes.pth"
    proc = run_script("tools/convert_coco_to_cityscapes.py", path, out, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = _cfg("Cityscapes/panet_R_50_FPN_coco_pretrained.yaml")
    cfg.MODEL.WEIGHTS = str(out)
    from panet_d2 import PANetCheckpointer

    city = build_model(cfg)
    PANetCheckpointer(city).load(str(out))
    c, s = coco.state_dict(), city.state_dict()
    # Cityscapes: person, rider, car, truck, bus, train, motorcycle, bicycle; COCO's indices of
    # person, person, car, truck, bus, train, motorcycle, bicycle (Detectron2's COCO order)
    coco_idx = [0, 0, 2, 7, 5, 6, 3, 1]
    w = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(s[w], torch.cat([c[w][coco_idx], c[w][-1:]]))
    b = "roi_heads.box_predictor.bbox_pred.weight"
    assert torch.equal(s[b], c[b].view(80, 4, -1)[coco_idx].reshape(32, -1))
    m = "roi_heads.mask_head.predictor.weight"
    assert torch.equal(s[m], c[m][coco_idx])
    for k in ("backbone.bpa_out3.weight", "roi_heads.box_head.fc1.per_level.weight"):
        assert torch.equal(s[k], c[k])


def test_coco_checkpoint_to_cityscapes_missing_input(tmp_path):
    """A missing checkpoint or a folder is named as such (not "truncated or not a checkpoint?")."""
    cases = ((tmp_path / "nope.pth", "does not exist"), (tmp_path, "is a folder"))
    script = "tools/convert_coco_to_cityscapes.py"  # side by side: each spends seconds importing
    procs = [start_script(script, path, tmp_path / "o.pth", cwd=ROOT) for path, _ in cases]
    for (path, problem), proc in zip(cases, procs):
        stderr = proc.communicate(timeout=300)[1]
        assert proc.returncode == 2
        assert stderr.strip().splitlines()[-1] == (
            "ERROR: Checkpoint {!r} {} (the COCO checkpoint). Give a local .pth/.pkl file or a "
            "Detectron2 model-zoo URL.".format(str(path), problem)
        )


def _small_coco_checkpoint(path):
    """A COCO (80-class) checkpoint with the tensors the conversion reads, and one more."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "roi_heads.box_predictor.cls_score.weight": (81, 8),
        "roi_heads.box_predictor.cls_score.bias": (81,),
        "roi_heads.box_predictor.bbox_pred.weight": (320, 8),
        "roi_heads.box_predictor.bbox_pred.bias": (320,),
        "backbone.bpa_out3.weight": (4, 4, 3, 3),
    }
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save({"model": state}, str(path))
    return state


class _FailingWrite(FileProxy):
    def write(self, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_coco_to_cityscapes_refuses_bad_outputs_and_writes_atomically(tmp_path, monkeypatch):
    """As tools/convert_panet_release.py: the input, a link to it, a folder, a path under a file
    are refused in one line; weights with NaN or inf too; nothing of the user's is lost."""
    tool = load_script("tools/convert_coco_to_cityscapes.py", "convert_coco_to_cityscapes")
    src, a_file, link = tmp_path / "coco.pth", tmp_path / "notes.txt", tmp_path / "link.pth"
    state = _small_coco_checkpoint(src)
    a_file.write_text("x")
    link.symlink_to(src)
    data = src.read_bytes()
    cases = {
        src: "Output '{}' is the input COCO checkpoint; give another file name.",
        link: "Output '{}' is the input COCO checkpoint; give another file name.",
        tmp_path: "Output '{}' is a folder; give the .pth file to write.",
        a_file / "sub" / "o.pth": "Cannot write '{}': '%s' is a file, not a folder." % a_file,
        tmp_path / "cs.pkl": "Output '{}': MODEL.WEIGHTS reads a .pkl file as a pickle of NumPy "
        "arrays (Detectron2's model zoo), and this tool writes a torch file: give a .pth name.",
    }
    for path, expected in cases.items():
        assert error_exit(tool.main, [str(src), str(path)]) == "ERROR: " + expected.format(path)
    assert src.read_bytes() == data and a_file.read_text() == "x"

    # written atomically: over an existing file once complete; a failed write leaves it as it was
    out = tmp_path / "out.pth"
    out.write_bytes(b"the user's file")
    open_ = PathManager.open
    with monkeypatch.context() as m:
        m.setattr(PathManager, "open", lambda *a, **k: _FailingWrite(open_(*a, **k)))
        line = error_exit(tool.main, [str(src), str(out)])
    assert line.startswith("ERROR: Cannot write '{}': {}".format(out, os.strerror(errno.EIO)))
    assert out.read_bytes() == b"the user's file"
    assert sorted(os.listdir(tmp_path)) == ["coco.pth", "link.pth", "notes.txt", "out.pth"]
    tool.main([str(src), str(out)])
    w = "roi_heads.box_predictor.cls_score.weight"
    written = torch.load(str(out), weights_only=True)["model"]
    assert torch.equal(written[w], state[w][[0, 0, 2, 7, 5, 6, 3, 1, 80]])

    # NaN / inf in the weights: named with its count, nothing written
    key = "backbone.bpa_out3.weight"
    state[key][0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    torch.save({"model": state}, str(src))
    new = tmp_path / "new.pth"
    assert error_exit(tool.main, [str(src), str(new)]) == (
        "ERROR: COCO checkpoint tensor {} has 2 of 144 values not finite (1 tensor(s) in all): "
        "NaN or inf, the weights of a diverged or damaged run; not converted.".format(key)
    )
    assert not new.exists()
