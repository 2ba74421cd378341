# -*- coding: utf-8 -*-
"""
The panoptic merge in tensor form (``merge_panoptic_tensors``): the same results as Detectron2's
``combine_semantic_and_instance_outputs`` eagerly and compiled by TorchScript; and what it makes
possible: Detectron2's ``FlopCountAnalysis`` (which traces the model) on the panoptic model.
"""

import numpy as np
import torch

from detectron2.modeling.meta_arch.panoptic_fpn import (
    combine_semantic_and_instance_outputs as d2_combine,
)

from panet_d2.analysis import flop_count_analysis
from panet_d2.modeling.postprocessing.panoptic_merge import (
    SEGMENT_FIELDS,
    combine_semantic_and_instance_outputs,
    merge_panoptic_tensors,
    segments_to_info,
)

from ..common import random_image
from ..modeling.postprocessing.test_panoptic_merge import _inst, _random_case, _types
from .common import small_model

SCRIPTED_MERGE = torch.jit.script(merge_panoptic_tensors)


def _model_like_cases(n, seed):
    """Random cases of test_panoptic_merge with what the model gives: labels >= 0, integers."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        inst, sem, *args = _random_case(rng)
        if not sem.dtype.is_floating_point and (sem.numel() == 0 or int(sem.min()) >= 0):
            cases.append((inst, sem, args))
    return cases


def test_tensor_form_equals_detectron2_eager_and_scripted():
    for inst, sem, args in _model_like_cases(80, seed=5):
        ref_seg, ref_info = d2_combine(inst, sem, *args)
        for merge in (merge_panoptic_tensors, SCRIPTED_MERGE):
            seg, segments = merge(
                inst.scores, inst.pred_classes, inst.pred_masks, sem, *[float(a) for a in args]
            )
            assert seg.dtype == torch.int32 and torch.equal(seg, ref_seg)
            assert segments.dtype == torch.float64 and segments.shape == (len(ref_info), 5)
            info = segments_to_info(segments)
            assert info == ref_info and _types(info) == _types(ref_info)


def test_segment_rows():
    h, w = 10, 10
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, :4, :4] = True
    inst = _inst(masks, [0.75, 0.9], [7, 3])  # the second one is empty
    sem = torch.zeros(h, w, dtype=torch.int64)
    sem[5:] = 2
    seg, segments = merge_panoptic_tensors(
        inst.scores, inst.pred_classes, inst.pred_masks, sem, 0.5, 10.0, 0.5
    )
    assert SEGMENT_FIELDS == ("id", "category_id", "isthing", "score_or_area", "instance_id")
    assert segments.tolist() == [[1, 7, 1, 0.75, 0], [2, 2, 0, 50, -1]]
    assert int((seg == 1).sum()) == 16 and int((seg == 2).sum()) == 50


def test_eager_merge_under_tracing_gives_segments_info():
    # what FlopCountAnalysis and TracingAdapter see: the eager API, computed in tensor form
    inst, sem, args = _model_like_cases(1, seed=11)[0]
    traced_results = []

    def f(scores, classes, masks, sem):
        inst.scores, inst.pred_classes, inst.pred_masks = scores, classes, masks
        seg, info = combine_semantic_and_instance_outputs(inst, sem, *args)
        traced_results.append(info)
        return seg

    torch.jit.trace(f, (inst.scores, inst.pred_classes, inst.pred_masks, sem), check_trace=False)
    assert traced_results[0] == d2_combine(inst, sem, *args)[1]


def _unsupported_ops(model):
    fca = flop_count_analysis(model, [{"image": random_image(128, 160)}])
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total(), set(fca.unsupported_ops())


def test_flop_count_analysis_of_the_panoptic_model():
    config = "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml"
    flops, ours = _unsupported_ops(small_model(config))
    # Detectron2's PanopticFPN on the same components: counts the same flops, and leaves out at
    # least the ops left out here (its own merge adds aten::masked_fill_)
    d2_flops, theirs = _unsupported_ops(
        small_model(config, ["MODEL.META_ARCHITECTURE", "PanopticFPN"])
    )
    assert flops == d2_flops > 0
    assert ours <= theirs
