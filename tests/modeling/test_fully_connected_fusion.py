# -*- coding: utf-8 -*-
"""Fully-connected fusion in the mask head, against the paper's structure and Detectron2's head."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from panet_d2 import AFPConv2d, FullyConnectedFusion, PANetMaskHead

SHAPE = ShapeSpec(channels=256, height=14, width=14)


def _head(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return PANetMaskHead(
        SHAPE, num_classes=num_classes, conv_dims=[256] * 5, ff_enabled=True, **kwargs
    )


def test_structure_matches_paper():
    head = _head()
    ff = head.fc_fusion
    assert isinstance(ff, FullyConnectedFusion)
    assert (
        ff.conv1.in_channels == 256
        and ff.conv1.out_channels == 256
        and ff.conv1.kernel_size == (3, 3)
    )
    assert ff.conv2.out_channels == 128 and ff.conv2.kernel_size == (3, 3)  # halves the channels
    assert ff.fc.in_features == 128 * 14 * 14 and ff.fc.out_features == 28 * 28  # one fc, 784-d
    assert [n for n, _ in ff.named_children()] == ["conv1", "conv2", "fc"]


@pytest.mark.parametrize("fuse", ["sum", "max", "product"])
@pytest.mark.parametrize("start", [2, 3, 4])
def test_fusion_of_fcn_and_fc_mask(fuse, start):
    """Fused logits = op(FCN per-class logits, class-agnostic fc mask from conv<start>)."""
    head = _head(ff_start_layer=start, ff_fuse_type=fuse).eval()
    x = torch.randn(3, 256, 14, 14)
    out = head.layers(x)
    assert out.shape == (3, 5, 28, 28)
    # Independent reference: Detectron2's head with the same weights gives the FCN logits; the
    # fc path is recomputed from the output of conv<start> with plain torch ops.
    d2 = MaskRCNNConvUpsampleHead(SHAPE, num_classes=5, conv_dims=[256] * 5).eval()
    d2.load_state_dict(
        {k: v for k, v in head.state_dict().items() if not k.startswith("fc_fusion.")}
    )
    fcn = d2.layers(x)
    h = x
    for k in range(1, start + 1):
        h = getattr(d2, "mask_fcn%d" % k)(h)
    ff = head.fc_fusion
    h = F.relu(F.conv2d(h, ff.conv1.weight, ff.conv1.bias, padding=1))
    h = F.relu(F.conv2d(h, ff.conv2.weight, ff.conv2.bias, padding=1))
    fc_mask = F.linear(h.flatten(1), ff.fc.weight, ff.fc.bias).view(3, 1, 28, 28)
    expected = {"sum": fcn + fc_mask, "max": torch.maximum(fcn, fc_mask), "product": fcn * fc_mask}[
        fuse
    ]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_fc_activation_option():
    head = _head(ff_fc_activation=True)
    head.fc_fusion.fc.bias.data.fill_(-100.0)  # the fc output is all negative: ReLU makes it 0
    x = torch.randn(2, 256, 14, 14)
    head_no = _head()
    head_no.load_state_dict(head.state_dict())
    head_no.fc_fusion.fc.weight.data.zero_()
    head_no.fc_fusion.fc.bias.data.zero_()
    torch.testing.assert_close(head.layers(x), head_no.layers(x))


def test_class_agnostic_masks():
    head = _head(num_classes=1)
    assert head.layers(torch.randn(2, 256, 14, 14)).shape == (2, 1, 28, 28)


def test_output_works_with_detectron2_loss_and_inference():
    head = _head(num_levels=4)
    assert isinstance(head.mask_fcn1, AFPConv2d)
    x = torch.randn(2, 4, 256, 14, 14)  # AFP: level-stacked grids
    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 60.0, 50.0]]))
    inst.gt_classes = torch.tensor([1, 3])
    inst.gt_masks = PolygonMasks([[[0, 0, 20, 0, 20, 20]], [[10, 10, 50, 10, 50, 40, 10, 40]]])
    logits = head.layers(x)
    with EventStorage(0):
        loss = mask_rcnn_loss(logits, [inst])
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert head.fc_fusion.fc.weight.grad.abs().sum() > 0
    pred = Instances((64, 64))
    pred.pred_classes = torch.tensor([1, 3])
    mask_rcnn_inference(logits.detach(), [pred])
    assert pred.pred_masks.shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(ff_start_layer=5), "MODEL.FF.START_LAYER"),
        (dict(ff_start_layer=0), "MODEL.FF.START_LAYER"),
        (dict(ff_fuse_type="mean"), "MODEL.FF.FUSE_TYPE"),
    ],
)
def test_bad_values(kwargs, key):
    with pytest.raises(ValueError) as e:
        _head(**kwargs)
    assert key in str(e.value) and repr(list(kwargs.values())[0]) in str(e.value)


@pytest.mark.parametrize("num_conv,start", [(2, 3), (1, 2)])
def test_start_layer_beyond_the_mask_heads_convs(num_conv, start):
    # the fc path branches off after conv<START_LAYER>: a head of fewer convs has none to branch
    with pytest.raises(ValueError) as e:
        PANetMaskHead(
            SHAPE,
            num_classes=5,
            conv_dims=[256] * (num_conv + 1),
            ff_enabled=True,
            ff_start_layer=start,
        )
    assert str(e.value).startswith(
        f"MODEL.FF.START_LAYER={start} needs a mask head of {start} convs or more, not "
        f"MODEL.ROI_MASK_HEAD.NUM_CONV={num_conv}: "
    )
