# -*- coding: utf-8 -*-
"""The whole PANet model against Detectron2's Mask R-CNN, checkpoints, edge cases, bad configs."""

import pickle

import pytest
import torch

from detectron2 import model_zoo as d2_model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.proposal_generator import StandardRPNHead
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from panet_d2 import AFPConv2d, AFPLinear, PANetCheckpointer, PANetRPNHead
from panet_d2.errors import CheckpointError, ConfigError

from ..common import ALL_OFF, NARROW_HEADS, R18, panet_cfg, random_image, toy_instances

# ResNet-18 (BasicBlock), narrow FPN and heads, fewer sampled RoIs, proposals and detections keep
# the tests fast (building the R50 model's heads alone, 4 fc1 of 12.8M weights, takes seconds); the
# layers are the R50 model's. Detectron2's Mask R-CNN takes the same but FF's key.
SMALL_BACKBONE = (
    R18
    + NARROW_HEADS[:6]
    + [
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        100,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        64,
        "MODEL.RPN.POST_NMS_TOPK_TEST",
        200,
        "TEST.DETECTIONS_PER_IMAGE",
        20,
    ]
)
assert NARROW_HEADS[6] == "MODEL.FF.CONV_DIMS"
SMALL = SMALL_BACKBONE + NARROW_HEADS[6:]


def _d2_mask_rcnn():
    cfg = get_cfg()
    cfg.merge_from_file(
        d2_model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(SMALL_BACKBONE)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Random ResNet weights with FrozenBN blow activations up to ~1e3; scale the stem so that the
    # heads see O(1) features and produce many distinct detections to compare.
    model.backbone.bottom_up.stem.conv1.weight.data *= 1e-3
    return model


def _panet(opts=()):
    cfg = panet_cfg(
        "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
        small=False,
        opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0] + SMALL + list(opts),
    )
    torch.manual_seed(1)
    return build_model(cfg)


@pytest.fixture(scope="module")
def d2_model():
    return _d2_mask_rcnn()


@pytest.fixture(scope="module")
def d2_checkpoint(d2_model, tmp_path_factory):
    """A Detectron2 Mask R-CNN checkpoint as the model zoo ships it (.pkl with numpy arrays)."""
    path = tmp_path_factory.mktemp("ckpt") / "mask_rcnn_R_50_FPN.pkl"
    sd = {k: v.numpy() for k, v in d2_model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def test_all_off_is_detectron2_mask_rcnn(d2_model):
    ours = _panet(ALL_OFF)
    assert type(ours) is GeneralizedRCNN and isinstance(ours.roi_heads, StandardROIHeads)
    # PANet's RPN head (its outputs checked) against Detectron2's StandardRPNHead: same outputs
    assert type(ours.proposal_generator.rpn_head) is PANetRPNHead
    assert type(d2_model.proposal_generator.rpn_head) is StandardRPNHead
    theirs_sd, ours_sd = d2_model.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in theirs_sd)

    ours.load_state_dict(theirs_sd)
    image = random_image(192, 256)
    ours.eval(), d2_model.eval()
    with torch.no_grad():
        a = ours([{"image": image}])[0]["instances"]
        b = d2_model([{"image": image}])[0]["instances"]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.pred_masks, b.pred_masks)

    ours.train(), d2_model.train()
    batch = [{"image": image, "instances": toy_instances(192, 256)}]
    with EventStorage(0):
        torch.manual_seed(3)
        la = ours(batch)
        torch.manual_seed(3)
        lb = d2_model(batch)
    assert la.keys() == lb.keys()
    for k in la:
        torch.testing.assert_close(la[k], lb[k])


def _load(checkpointer_cls, model, path):
    """Load ``path`` as ``checkpointer_cls(model).load(path)`` does, PANetCheckpointer as the
    trainer's (a warm start: new layers allowed); returns incompatible keys."""
    kwargs = {"warm_start": True} if checkpointer_cls is PANetCheckpointer else {}
    checkpointer = checkpointer_cls(model, **kwargs)
    return checkpointer._load_model(checkpointer._load_file(path))


@pytest.mark.parametrize("checkpointer_cls", [DetectionCheckpointer, PANetCheckpointer])
def test_detectron2_checkpoint_loads_into_all_off_model(d2_model, d2_checkpoint, checkpointer_cls):
    ours = _panet(ALL_OFF)
    incompatible = _load(checkpointer_cls, ours, d2_checkpoint)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    for k, v in d2_model.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


@pytest.mark.parametrize("checkpointer_cls", [DetectionCheckpointer, PANetCheckpointer])
def test_detectron2_checkpoint_warm_starts_full_panet(d2_model, d2_checkpoint, checkpointer_cls):
    # Detectron2's own DetectionCheckpointer (DefaultPredictor, lazyconfig_train_net.py) and
    # ours: fc1 / mask_fcn1 of Mask R-CNN go to every level, never left random.
    ours = _panet()
    incompatible = _load(checkpointer_cls, ours, d2_checkpoint)
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    # Only the new layers (bottom-up path, FF path) are newly initialised.
    new = incompatible.missing_keys
    assert new and all(
        k.startswith("backbone.bpa_") or k.startswith("roi_heads.mask_head.fc_fusion.") for k in new
    )
    assert {k.split(".")[1][:-1] for k in new if k.startswith("backbone.")} == {
        "bpa_down",
        "bpa_out",
    }
    d2 = d2_model.state_dict()
    fc1 = ours.roi_heads.box_head.fc1
    conv1 = ours.roi_heads.mask_head.mask_fcn1
    assert isinstance(fc1, AFPLinear) and isinstance(conv1, AFPConv2d)
    for level in range(4):
        assert torch.equal(fc1.per_level.weight[level], d2["roi_heads.box_head.fc1.weight"])
        assert torch.equal(fc1.per_level.bias[level], d2["roi_heads.box_head.fc1.bias"])
        n = d2["roi_heads.mask_head.mask_fcn1.weight"].shape[0]  # the mask head's width
        rows = slice(level * n, (level + 1) * n)
        assert torch.equal(conv1.per_level.weight[rows], d2["roi_heads.mask_head.mask_fcn1.weight"])
        assert torch.equal(conv1.per_level.bias[rows], d2["roi_heads.mask_head.mask_fcn1.bias"])
    assert torch.equal(
        ours.state_dict()["backbone.fpn_output2.weight"], d2["backbone.fpn_output2.weight"]
    )


def test_backward_reaches_every_level():
    model = _panet()
    model.train()
    with EventStorage(0):
        losses = model([{"image": random_image(192, 256), "instances": toy_instances(192, 256)}])
    sum(losses.values()).backward()
    bb = model.backbone
    for name in (
        "bpa_down3",
        "bpa_out3",
        "bpa_down4",
        "bpa_out4",
        "bpa_down5",
        "bpa_out5",
        "fpn_output2",
        "fpn_lateral5",
    ):
        assert getattr(bb, name).weight.grad.abs().sum() > 0, name
    fc1 = model.roi_heads.box_head.fc1
    conv1 = model.roi_heads.mask_head.mask_fcn1
    n = conv1.per_level.weight.shape[0] // 4  # each level's output channels
    assert n > 0
    for level in range(4):
        assert fc1.per_level.weight.grad[level].abs().sum() > 0
        assert conv1.per_level.weight.grad[level * n : (level + 1) * n].abs().sum() > 0
    ff = model.roi_heads.mask_head.fc_fusion
    assert ff.fc.weight.grad.abs().sum() > 0 and ff.conv2.weight.grad.abs().sum() > 0


def test_training_step_without_annotations():
    model = _panet()
    model.train()
    empty = Instances((128, 160))
    empty.gt_boxes = toy_instances().gt_boxes[:0]
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = toy_instances().gt_masks[:0]
    with EventStorage(0):
        losses = model([{"image": random_image(), "instances": empty}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_inference_with_zero_detections():
    model = _panet(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.01])
    model.eval()
    with torch.no_grad():
        out = model([{"image": random_image()}])[0]["instances"]
    assert len(out) == 0 and out.pred_masks.shape[1:] == (128, 160)


def test_checkpoint_errors(tmp_path):
    model = _panet()
    with pytest.raises(CheckpointError, match="does-not-exist.pth"):
        PANetCheckpointer(model).load(str(tmp_path / "does-not-exist.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        PANetCheckpointer(model).load(str(bad))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["backbone.bpa_out3.weight"] = torch.zeros(128, 256, 3, 3)
    path = tmp_path / "wrong_shape.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as e:
        PANetCheckpointer(model).load(str(path))
    assert "backbone.bpa_out3.weight" in str(e.value) and "[128, 256, 3, 3]" in str(e.value)


def test_checkpoint_save_is_atomic_and_roundtrips(tmp_path):
    model = _panet()  # narrow: 5 saves of a few MB, not of ~200 MB
    ckpt = PANetCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    # a later save replaces the tag; saving under the same name replaces the file
    ckpt.save("model_0000010", iteration=10)
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000010.pth")
    ckpt.save("model_0000010", iteration=11)
    assert torch.load(str(tmp_path / "model_0000010.pth"), weights_only=False)["iteration"] == 11
    (tmp_path / "model_0000010.pth").unlink()
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # a save that fails midway leaves the previous checkpoint and no partial file
    with pytest.raises(RuntimeError):
        ckpt.save("model_0000010", iteration=10, broken=_Unpicklable())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    # a partial file left by a killed process is removed when the next run starts
    (tmp_path / "model_0000011.pth.0123abcd.partial").write_bytes(b"half")
    (tmp_path / "notes.partial").write_bytes(b"a user's")  # not one of its names: kept
    PANetCheckpointer(model, save_dir=str(tmp_path))
    assert not (tmp_path / "model_0000011.pth.0123abcd.partial").exists()
    assert (tmp_path / "notes.partial").read_bytes() == b"a user's"
    (tmp_path / "notes.partial").unlink()
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    other = _panet()
    extra = PANetCheckpointer(other, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


@pytest.mark.parametrize(
    "opts,key,value",
    [
        (["MODEL.AFP.FUSE_TYPE", "avg"], "MODEL.AFP.FUSE_TYPE", "avg"),
        (["MODEL.AFP.BOX_FUSE_POSITION", "fc2"], "MODEL.AFP.BOX_FUSE_POSITION", "fc2"),
        (["MODEL.FF.START_LAYER", 5], "MODEL.FF.START_LAYER", 5),
        (["MODEL.FF.START_LAYER", 1], "MODEL.FF.START_LAYER", 1),
        (["MODEL.FF.FC_INIT", "zeros"], "MODEL.FF.FC_INIT", "zeros"),
        (["MODEL.AFP.POOLER_SAMPLING_RATIO", -1], "MODEL.AFP.POOLER_SAMPLING_RATIO", -1),
        (["MODEL.AFP.POOLER_SAMPLING_RATIO", 17], "MODEL.AFP.POOLER_SAMPLING_RATIO", 17),
        (
            ["MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignRotated"],
            "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
            "ROIAlignRotated",
        ),
        (["MODEL.FF.FUSE_TYPE", "concat"], "MODEL.FF.FUSE_TYPE", "concat"),
        (["MODEL.ROI_BOX_HEAD.FC_NORM", "IN"], "MODEL.ROI_BOX_HEAD.FC_NORM", "IN"),
        (["MODEL.PAFPN.NORM", "batchnorm"], "MODEL.PAFPN.NORM", "batchnorm"),
    ],
)
def test_bad_config_values(opts, key, value):
    with pytest.raises(ValueError) as e:
        _panet(opts)
    msg = str(e.value)
    assert key in msg and repr(value) in msg and "allowed" in msg


def test_box_head_without_layers():
    # Detectron2's FastRCNNConvFCHead asserts it with no message
    with pytest.raises(ValueError, match="NUM_CONV=0 and NUM_FC=0: the box head needs at least"):
        _panet(["MODEL.ROI_BOX_HEAD.NUM_FC", 0])


def test_afp_needs_pyramid_levels():
    cfg = panet_cfg("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")
    # Detectron2's C4 backbone: one level, "res4".
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert "MODEL.AFP.ENABLED" in str(e.value) and "['res4']" in str(e.value)


def test_afp_needs_fusing_heads():
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.NAME='PANetConvFCHead'"):
        _panet(["MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead"])


def test_unknown_in_feature():
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.IN_FEATURES"):
        _panet(["MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p9"]])


def test_afp_sampling_ratio_reaches_both_all_level_poolers():
    from panet_d2 import AdaptiveFeaturePooler

    cfg = panet_cfg("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")
    assert cfg.MODEL.AFP.POOLER_SAMPLING_RATIO == 2  # the authors' release
    heads = build_model(
        panet_cfg(
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            opts=SMALL + ["MODEL.AFP.POOLER_SAMPLING_RATIO", 3],
        )
    ).roi_heads
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert isinstance(pooler, AdaptiveFeaturePooler) and len(pooler.level_poolers) == 4
        assert [p.sampling_ratio for p in pooler.level_poolers] == [3] * 4
    # AFP off: Detectron2's poolers with Detectron2's key (POOLER_SAMPLING_RATIO, default 0)
    heads = _panet(ALL_OFF).roi_heads
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert type(pooler).__name__ == "ROIPooler"
        assert [p.sampling_ratio for p in pooler.level_poolers] == [0] * 4
    # AFP on: Detectron2's key of a head is not read, so another value than 0 (its default) or
    # AFP's is refused, naming the key to set
    opts = SMALL + ["MODEL.AFP.POOLER_SAMPLING_RATIO", 3]
    for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        cfg = panet_cfg("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml", opts=opts)
        cfg.MODEL[head].POOLER_SAMPLING_RATIO = 3  # the same as AFP's: allowed
        build_model(cfg)
        cfg.MODEL[head].POOLER_SAMPLING_RATIO = 4
        with pytest.raises(ConfigError) as e:
            build_model(cfg)
        assert str(e.value) == (
            f"MODEL.{head}.POOLER_SAMPLING_RATIO=4: with AFP on, the poolers take "
            "MODEL.AFP.POOLER_SAMPLING_RATIO (now 3); set that."
        )
