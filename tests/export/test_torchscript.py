# -*- coding: utf-8 -*-
"""
TorchScript export of the instance, detection and panoptic models, as Detectron2 exports Mask
R-CNN (tests/export/test_torchscript.py of Detectron2): scripting with ``scripting_with_instances``
and tracing with ``TracingAdapter``, for the BPA / AFP / FF / HHD variants; each exported model
gives the eager model's outputs, bit for bit (same kernels on the CPU), on the image size it was
exported with and on another one.
"""

import io

import pytest
import torch

from detectron2.export import scripting_with_instances

from panet_d2 import AdaptiveFeaturePooler

from .common import (
    OTHER_IMAGE,
    TRACE_IMAGE,
    assert_equal_fields,
    export,
    image,
    instances_fields,
    small_model,
)

# A handful of the configs (all 45 would take minutes): what each switches on or off.
INSTANCE_CONFIGS = [
    "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",  # BPA + AFP (after fc1, max) + FF
    "ablations/rbl.yaml",  # everything off: Mask R-CNN with Detectron2's FPN
    "ablations/mst_mbn_bpa_afp_ff_hhd.yaml",  # all on + heavier box head (per-level conv1)
    "ablations/afp_before_fc1_sum.yaml",  # AFP fusing the RoIAlign grids (sum), no FF
    "COCO-Detection/panet_R_50_FPN_1x.yaml",  # detection only (BPA + AFP, no mask branch)
]
PANOPTIC_CONFIGS = [
    "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml",  # BPA + AFP + FF
    "COCO-PanopticSegmentation/ablations/panoptic_fpn_R_50_1x.yaml",  # Panoptic FPN
]


def _reload(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("config", INSTANCE_CONFIGS)
def test_instance_model_scripts_and_traces(config):
    model = small_model(config)
    keys_before = list(model.state_dict())
    # Detectron2's API on the model itself, as its test does for Mask R-CNN (deployable_copy only
    # puts BatchNorm2d in place of SyncBatchNorm, which TorchScript cannot compile)
    scripted = scripting_with_instances(export.deployable_copy(model), export.SCRIPTING_FIELDS)
    traced, schema = export.trace_model(model, export.sample_inputs(model, image(TRACE_IMAGE)))
    traced = _reload(traced)
    assert list(model.state_dict()) == keys_before  # the eager model is left as it was
    # traced on the CPU: AFP's all-level RoIAlign as one batched op (as eager), one NMS per class
    graph = str(traced.inlined_graph)
    afp = isinstance(model.roi_heads.box_pooler, AdaptiveFeaturePooler)
    assert ("aten::embedding_bag" in graph) == afp and ("torchvision::roi_align" in graph) != afp
    assert graph.count("torchvision::nms") >= model.roi_heads.num_classes
    for spec in (TRACE_IMAGE, OTHER_IMAGE):
        img = image(spec)
        with torch.no_grad():
            expected = instances_fields(model.inference([{"image": img}], do_postprocess=False)[0])
            got_scripted = scripted.inference([{"image": img}], do_postprocess=False)[0]
            got_traced = schema(traced(*export.sample_inputs(model, img)))
        assert len(expected["scores"]) > 0
        assert ("pred_masks" in expected) == ("Detection" not in config)
        assert_equal_fields(expected, instances_fields(got_scripted))
        assert_equal_fields(expected, instances_fields(got_traced))
        assert tuple(got_traced.image_size) == spec[:2]


def test_scripted_instance_model_saves_and_reloads():
    # what tools/export_model.py saves: dicts of tensors, loadable in another process
    model = small_model(INSTANCE_CONFIGS[0])
    scripted = _reload(export.script_model(model))
    img = image(OTHER_IMAGE)
    with torch.no_grad():
        expected = instances_fields(model.inference([{"image": img}], do_postprocess=False)[0])
        got = scripted([{"image": img}])[0]
    assert_equal_fields(expected, got)
    # Scripting the model itself: torch.jit.script puts the prepared copies of the modules in the
    # model (renaming their parameters, as with Detectron2's FPN and ResNet), which still runs
    scripted = scripting_with_instances(model, export.SCRIPTING_FIELDS)
    with torch.no_grad():
        again = instances_fields(model.inference([{"image": img}], do_postprocess=False)[0])
        got = scripted.inference([{"image": img}], do_postprocess=False)[0]
    assert_equal_fields(expected, again)
    assert_equal_fields(expected, instances_fields(got))


def _panoptic_eager(model, img, height, width):
    with torch.no_grad():
        return model([{"image": img, "height": height, "width": width}])[0]


def _assert_same_panoptic(expected, outputs):
    """``outputs``: the panoptic tensor form; ``expected``: the eager model's output."""
    got = export.eager_outputs(outputs, None, None, None)
    seg, info = expected["panoptic_seg"]
    assert torch.equal(got["panoptic_seg"][0], seg) and got["panoptic_seg"][1] == info
    assert any(s["isthing"] for s in info) and any(not s["isthing"] for s in info)
    assert torch.equal(got["sem_seg"], expected["sem_seg"])
    assert_equal_fields(instances_fields(expected["instances"]), instances_fields(got["instances"]))


@pytest.mark.parametrize("config", PANOPTIC_CONFIGS)
def test_panoptic_model_scripts_and_traces_with_its_merge(config):
    model = small_model(config)
    scripted = _reload(export.script_model(model))
    inputs = export.sample_inputs(model, image(TRACE_IMAGE))
    traced, schema = export.trace_model(model, inputs)
    traced = _reload(traced)
    # at the input size, and resized to another output size ("height", "width")
    for spec, (height, width) in [(TRACE_IMAGE, TRACE_IMAGE[:2]), (OTHER_IMAGE, (150, 250))]:
        img = image(spec)
        expected = _panoptic_eager(model, img, height, width)
        assert expected["panoptic_seg"][0].shape == (height, width)
        with torch.no_grad():
            got_scripted = scripted(
                [{"image": img, "height": torch.tensor(height), "width": torch.tensor(width)}]
            )[0]
            got_traced = schema(traced(*export.sample_inputs(model, img, height, width)))
        _assert_same_panoptic(expected, got_scripted)
        _assert_same_panoptic(expected, got_traced)
    # without "height" / "width", a scripted model outputs at the input size
    img = image(OTHER_IMAGE)
    with torch.no_grad():
        got = scripted([{"image": img}])[0]
    _assert_same_panoptic(_panoptic_eager(model, img, *OTHER_IMAGE[:2]), got)


def test_sync_batchnorm_is_converted_for_export():
    model = small_model("ablations/mst_mbn_bpa_afp_ff_hhd.yaml")
    sync = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert sync  # MBN: a SyncBN after the new layers
    copy = export.deployable_copy(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in copy.modules())
    assert list(copy.state_dict()) == list(model.state_dict())
    assert sync[0] in model.modules()  # the model itself keeps them


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        export.inference_function(torch.nn.Linear(1, 1))
