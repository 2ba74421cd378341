# -*- coding: utf-8 -*-
"""
The panoptic merge (panet_d2.modeling.postprocessing.panoptic_merge): one case per rule, and
exact equality with Detectron2.
"""

import numpy as np
import pytest
import torch

from detectron2.modeling.meta_arch.panoptic_fpn import (
    combine_semantic_and_instance_outputs as d2_combine,
)
from detectron2.structures import Instances

from panet_d2.modeling.postprocessing.panoptic_merge import combine_semantic_and_instance_outputs


def _inst(masks, scores, classes):
    masks = torch.as_tensor(masks)
    inst = Instances(tuple(masks.shape[1:]))
    inst.pred_masks = masks
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    return inst


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _types(info):
    return [{k: type(v) for k, v in d.items()} for d in info]


def _assert_same(inst, sem, *args):
    ref_seg, ref_info = d2_combine(inst, sem, *args)
    seg, info = combine_semantic_and_instance_outputs(inst, sem, *args)
    assert seg.dtype == torch.int32 and seg.shape == ref_seg.shape
    assert torch.equal(seg, ref_seg)
    assert info == ref_info
    assert _types(info) == _types(ref_info)
    return seg, info


def test_score_threshold_stops_the_loop():
    h, w = 20, 20
    masks = torch.stack(
        [_box(h, w, 0, 5, 0, 5), _box(h, w, 10, 15, 10, 15), _box(h, w, 5, 9, 5, 9)]
    )
    inst = _inst(masks, [0.9, 0.3, 0.6], [1, 2, 3])
    sem = torch.zeros(h, w, dtype=torch.int64)
    seg, info = _assert_same(inst, sem, 0.5, 0, 0.5)
    assert [(d["id"], d["instance_id"], d["category_id"]) for d in info] == [(1, 0, 1), (2, 2, 3)]
    assert not (seg[10:15, 10:15] != 0).any()


def test_overlap_rejection_and_partial_overlap():
    h, w = 20, 20
    a = _box(h, w, 0, 10, 0, 10)  # 100 px, first
    b = _box(h, w, 0, 10, 4, 14)  # 100 px, 60 overlap with a -> 0.6 > 0.5 rejected
    c = _box(h, w, 0, 10, 5, 15)  # 100 px, 50 overlap -> 0.5, not > 0.5: accepted, free part only
    inst = _inst(torch.stack([a, b, c]), [0.9, 0.8, 0.7], [0, 1, 2])
    sem = torch.zeros(h, w, dtype=torch.int64)
    seg, info = _assert_same(inst, sem, 0.5, 0, 0.5)
    assert [d["instance_id"] for d in info] == [0, 2]
    assert (seg[0:10, 0:10] == 1).all()
    assert (seg[0:10, 10:15] == 2).all()
    assert int((seg == 2).sum()) == 50
    # a stricter threshold also drops c
    _, info = _assert_same(inst, sem, 0.4, 0, 0.5)
    assert [d["instance_id"] for d in info] == [0]


def test_stuff_area_threshold_and_label_zero():
    h, w = 10, 10
    sem = torch.zeros(h, w, dtype=torch.int64)
    sem[:, 0:5] = 3  # 50 px
    sem[0:2, 5:7] = 7  # 4 px
    inst = _inst(torch.zeros(0, h, w, dtype=torch.bool), [], [])
    seg, info = _assert_same(inst, sem, 0.5, 5, 0.5)
    assert info == [{"id": 1, "isthing": False, "category_id": 3, "area": 50}]
    assert (seg[:, 0:5] == 1).all() and (seg[:, 5:] == 0).all()  # label 0 never a segment
    _, info = _assert_same(inst, sem, 0.5, 4, 0.5)
    assert [d["category_id"] for d in info] == [3, 7]


def test_stuff_only_takes_free_pixels():
    h, w = 10, 10
    sem = torch.full((h, w), 2, dtype=torch.int64)
    inst = _inst(_box(h, w, 0, 10, 0, 6)[None], [0.9], [4])
    seg, info = _assert_same(inst, sem, 0.5, 0, 0.5)
    assert info[1] == {"id": 2, "isthing": False, "category_id": 2, "area": 40}
    # stuff label fully covered by things, area 0 >= thresh 0: still a (zero-area) segment
    inst = _inst(torch.ones(1, h, w, dtype=torch.bool), [0.9], [4])
    _, info = _assert_same(inst, sem, 0.5, 0, 0.5)
    assert info[-1]["area"] == 0


def test_empty_mask_is_skipped_without_consuming_an_id():
    h, w = 8, 8
    masks = torch.stack([torch.zeros(h, w, dtype=torch.bool), _box(h, w, 2, 4, 2, 4)])
    inst = _inst(masks, [0.9, 0.8], [1, 2])
    seg, info = _assert_same(inst, torch.zeros(h, w, dtype=torch.int64), 0.5, 0, 0.5)
    assert info == [
        {"id": 1, "isthing": True, "score": pytest.approx(0.8), "category_id": 2, "instance_id": 1}
    ]
    assert int((seg == 1).sum()) == 4


def test_zero_instances_and_all_below_threshold():
    h, w = 12, 9
    sem = torch.randint(0, 4, (h, w))
    _assert_same(_inst(torch.zeros(0, h, w, dtype=torch.bool), [], []), sem, 0.5, 0, 0.5)
    inst = _inst(torch.ones(3, h, w, dtype=torch.bool), [0.1, 0.2, 0.3], [0, 1, 2])
    seg, info = _assert_same(inst, sem, 0.5, 0, 0.5)
    assert all(not d["isthing"] for d in info)


def test_float_probability_masks():
    g = torch.Generator().manual_seed(1)
    h, w = 30, 40
    probs = torch.rand(5, h, w, generator=g)
    probs[probs < 0.6] = 0.0  # .to(bool): any non-zero value is foreground
    probs[3] = 0.0
    inst = _inst(probs, [0.9, 0.8, 0.7, 0.95, 0.1], [1, 2, 3, 4, 5])
    _assert_same(inst, torch.randint(0, 3, (h, w), generator=g), 0.5, 10, 0.5)


def _random_case(rng):
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    n = int(rng.integers(0, 30))
    masks = np.zeros((n, h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:  # box
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[i, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        elif kind == 1:  # ellipse
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.5, h), rng.uniform(0.5, w)
            masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind == 2:  # speckle
            masks[i] = rng.random((h, w)) < rng.uniform(0, 0.3)
        # kind 3: empty
    if rng.random() < 0.3:
        scores = rng.integers(0, 5, n) / 4.0  # many ties
    else:
        scores = rng.random(n)
    inst = _inst(torch.from_numpy(masks), scores, rng.integers(0, 80, n))
    if rng.random() < 0.2:  # float probabilities
        inst.pred_masks = inst.pred_masks.float() * torch.from_numpy(rng.random((n, h, w))).float()
    nlab = int(rng.integers(1, 60))
    cell = int(rng.integers(1, 20))
    lab = rng.integers(0, nlab, ((h + cell - 1) // cell, (w + cell - 1) // cell))
    sem = np.kron(lab, np.ones((cell, cell), dtype=np.int64))[:h, :w]
    sem = torch.from_numpy(np.ascontiguousarray(sem))
    r = rng.random()
    if r < 0.1:
        sem = sem.to(torch.uint8)
    elif r < 0.2:
        sem = sem.int()
    overlap = float(rng.choice([0.0, 0.5, 1.0, rng.random()]))
    stuff_area = float(rng.choice([0, 1, rng.integers(0, 300)]))
    score_thresh = float(rng.choice([0.0, 0.5, rng.random()]))
    return inst, sem, overlap, stuff_area, score_thresh


def test_equal_to_detectron2_on_random_cases():
    rng = np.random.default_rng(1234)
    for _ in range(60):
        inst, sem, *args = _random_case(rng)
        _assert_same(inst, sem, *args)


def test_equal_on_tall_strided_and_sparse_inputs():
    # taller than the CPU path's row blocks, non-contiguous masks and labels, masks made of
    # a few pixels far apart (first/last row and column searches), int32 and uint8 labels
    rng = np.random.default_rng(99)
    for case in range(24):
        h, w = int(rng.integers(30, 150)), int(rng.integers(1, 70))
        n = int(rng.integers(1, 12))
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for i in range(n):
            for _ in range(int(rng.integers(0, 4))):
                masks[i, int(rng.integers(0, h)), int(rng.integers(0, w))] = True
            if rng.random() < 0.5:
                y0 = int(rng.choice([0, 31, 32, 33, 63, 64, int(rng.integers(0, h))]))
                y1, x1 = y0 + int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
                masks[i, y0:y1, :x1] = True
        if case % 3 == 0:
            masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
        elif case % 3 == 1:
            full = torch.zeros(2 * n, h, w, dtype=torch.bool)
            full[::2] = masks
            masks = full[::2]
        inst = _inst(masks, rng.random(n), rng.integers(0, 80, n))
        sem = torch.from_numpy(rng.integers(0, 6, (h, w)))
        sem = [sem, sem.t().contiguous().t(), sem.int(), sem.to(torch.uint8)][case % 4]
        _assert_same(inst, sem, float(rng.choice([0.0, 0.3, 0.5, 1.0])), 3, 0.0)


@pytest.mark.parametrize(
    "sem, pattern",
    [
        (torch.ones(20, 20), r"integer class ids.*torch\.float32"),
        (torch.ones(20, 20, dtype=torch.bool), r"integer class ids.*torch\.bool"),
        (torch.full((20, 20), -3), r"\[0, 65536\).*from -3 to -3"),
        (torch.full((20, 20), 100000), r"\[0, 65536\).*from 100000 to 100000"),
        (torch.ones(20, 21, dtype=torch.int64), r"same H, W.*\(4, 20, 20\).*\(20, 21\)"),
    ],
)
def test_label_maps_the_model_never_produces_are_refused(sem, pattern):
    # the semantic head's argmax gives integer class ids in [0, NUM_CLASSES): other label maps
    # (Detectron2 would accept them) get a clear error instead of a slow general path
    inst = _inst(torch.rand(4, 20, 20) > 0.7, [0.9, 0.7, 0.6, 0.55], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=pattern):
        combine_semantic_and_instance_outputs(inst, sem, 0.5, 3, 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_detectron2():
    rng = np.random.default_rng(7)
    for _ in range(10):
        inst, sem, *args = _random_case(rng)
        cuda_inst = inst.to("cuda")
        ref_seg, ref_info = d2_combine(cuda_inst, sem.cuda(), *args)
        seg, info = combine_semantic_and_instance_outputs(cuda_inst, sem.cuda(), *args)
        assert seg.is_cuda and torch.equal(seg, ref_seg) and info == ref_info
        cpu_seg, cpu_info = combine_semantic_and_instance_outputs(inst, sem, *args)
        assert torch.equal(seg.cpu(), cpu_seg) and info == cpu_info


def test_tensor_form_route_equals_detectron2():
    # the route that tensors on an accelerator take (the tensor form), run here on CPU tensors
    from panet_d2.modeling.postprocessing.panoptic_merge import _merge_by_tensor_form

    rng = np.random.default_rng(5)
    for _ in range(20):
        inst, sem, *args = _random_case(rng)
        ref_seg, ref_info = d2_combine(inst, sem, *args)
        seg, info = _merge_by_tensor_form(inst, sem, *args)
        assert torch.equal(seg, ref_seg) and info == ref_info
        assert _types(info) == _types(ref_info)
