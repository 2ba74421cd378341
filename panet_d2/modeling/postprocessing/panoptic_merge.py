"""Detectron2's panoptic merge, bit for bit: eager (fast on the CPU) and in tensor form
(TorchScript, tracing, ONNX). Method and speed: docs/deployment.md."""

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

_LABEL_LIMIT = 1 << 16  # semantic labels: the semantic head's class ids, in [0, _LABEL_LIMIT)


def combine_semantic_and_instance_outputs(
    instance_results, semantic_results, overlap_threshold, stuff_area_thresh, instances_score_thresh
):
    """Detectron2's ``panoptic_fpn.combine_semantic_and_instance_outputs`` (same arguments and
    results), for ``semantic_results`` (H, W) in [0, 65536); off the CPU or traced: tensor form."""
    thresholds = (overlap_threshold, stuff_area_thresh, instances_score_thresh)
    if torch.jit.is_tracing():  # a traced graph holds tensors and compiled code only
        return _merge_by_tensor_form(instance_results, semantic_results, *thresholds)
    masks, sem = instance_results.pred_masks, semantic_results
    if sem.dim() != 2 or masks.dim() != 3 or masks.shape[1:] != sem.shape:
        raise ValueError(
            f"The panoptic merge needs pred_masks (N, H, W) and semantic_results (H, W) of the "
            f"same H, W; got {tuple(masks.shape)} and {tuple(sem.shape)}."
        )
    if sem.dtype == torch.bool or sem.dtype.is_floating_point or sem.dtype.is_complex:
        raise ValueError(
            f"The panoptic merge needs semantic_results of integer class ids (the semantic "
            f"head's argmax); got dtype {sem.dtype}."
        )
    if sem.numel() > 0:
        lo, hi = torch.stack(torch.aminmax(sem)).tolist()
        if lo < 0 or hi >= _LABEL_LIMIT:
            raise ValueError(
                f"The panoptic merge needs semantic_results in [0, {_LABEL_LIMIT}) (class ids); "
                f"got values from {lo} to {hi}."
            )
    if semantic_results.device.type != "cpu":
        return _merge_by_tensor_form(instance_results, semantic_results, *thresholds)
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    pan = panoptic_seg.numpy()
    occupied = np.zeros(pan.shape, dtype=bool)  # the pixels the things took
    cand, cand_scores, cand_classes = _candidates(instance_results, instances_score_thresh)
    accepted = _things_cpu(instance_results.pred_masks, cand, pan, occupied, overlap_threshold)
    segments_info = [
        _segment_info(k + 1, cand_classes[j], True, cand_scores[j], cand[j])
        for k, j in enumerate(accepted)
    ]
    sem = semantic_results.detach().numpy()
    segments_info += _stuff_cpu(sem, occupied, pan, len(accepted), stuff_area_thresh)
    return panoptic_seg, segments_info


def _merge_by_tensor_form(instances, sem, *thresholds):
    scores, classes = instances.scores.to(sem.device), instances.pred_classes.to(sem.device)
    panoptic_seg, segments = merge_panoptic_tensors(
        scores, classes, instances.pred_masks.to(sem.device), sem, *[float(t) for t in thresholds]
    )
    return panoptic_seg, segments_to_info(segments.cpu())


def _candidates(instance_results, thresh):
    """Indices, scores, classes by descending score (Detectron2's argsort) above ``thresh``."""
    scores = instance_results.scores.detach()
    sorted_inds = torch.argsort(-scores)
    sorted_scores = scores[sorted_inds].tolist()
    k = next((i for i, s in enumerate(sorted_scores) if s < thresh), len(sorted_scores))
    kept = sorted_inds[:k]
    return kept.tolist(), sorted_scores[:k], instance_results.pred_classes[kept].tolist()


def _stuff_cpu(sem, occupied, pan, num_things, stuff_area_thresh):
    # one bincount: free area of label l in bin l, taken area in bin l + L
    if sem.size == 0:
        return []
    num_labels = int(sem.max()) + 1
    bins = np.multiply(occupied.view(np.uint8), num_labels, dtype=np.int64)
    np.add(bins, sem, out=bins, casting="unsafe")
    counts = np.bincount(bins.reshape(-1), minlength=2 * num_labels).tolist()
    info, lut = [], np.zeros(2 * num_labels, dtype=np.int32)
    for label in range(1, num_labels):
        area = counts[label]
        if area + counts[label + num_labels] == 0 or area < stuff_area_thresh:
            continue
        seg_id = num_things + len(info) + 1
        lut[label] = seg_id
        info.append(_segment_info(seg_id, label, False, area))
    if info:  # free pixels are 0 and taken pixels map to 0: adding writes the stuff ids
        pan += lut.take(bins)
    return info


_ROW_BLOCK = 16  # rows of the first block searched from the bottom; each next one twice as tall


def _mask_box(m, u, H, W):
    """Tight box (y0, y1, x0, x1) of the (H, W) bool array ``m`` (uint8 view ``u``) or None."""
    flat = m.reshape(-1)
    a = int(flat.argmax())
    if not flat[a]:
        return None
    y0, e, block = a // W, H, _ROW_BLOCK
    while True:
        s = max(y0, e - block)
        blk = m[s:e].reshape(-1)
        k = int(blk.argmax())
        if blk[k]:
            r = s + k // W  # first foreground row of the block; the last one is in [r, e)
            rows = u[r:e].max(axis=1)
            y1 = e - int(rows[::-1].argmax())
            break
        e, block = s, 2 * block
    cols = u[y0:y1].max(axis=0)
    return y0, y1, int(cols.argmax()), W - int(cols[::-1].argmax())


def _things_cpu(pred_masks, cand, pan, occupied, overlap_threshold):
    """Writes the things into ``pan`` and ``occupied``, each on its mask's box; the accepted."""
    H, W = pan.shape
    if H == 0 or W == 0:
        return []
    scratch, cur, accepted = np.empty(H * W, dtype=bool), 0, []  # cur: the last thing id written
    for j, inst_id in enumerate(cand):
        m = np.ascontiguousarray(pred_masks[inst_id].detach().to("cpu", torch.bool).numpy())
        box = _mask_box(m, m.view(np.uint8), H, W)
        if box is None:  # mask_area == 0
            continue
        ys, ye, xs, xe = box
        crop, occ = m[ys:ye, xs:xe], occupied[ys:ye, xs:xe]
        tmp = scratch[: (ye - ys) * (xe - xs)].reshape(ye - ys, xe - xs)
        mask_area = int(np.count_nonzero(crop))
        np.logical_and(crop, occ, out=tmp)
        intersect_area = int(np.count_nonzero(tmp))
        if intersect_area * 1.0 / mask_area > overlap_threshold:  # Detectron2's very test
            continue
        cur += 1
        if intersect_area > 0:
            np.greater(crop, occ, out=tmp)  # mask & ~occupied
        np.copyto(pan[ys:ye, xs:xe], cur, where=tmp if intersect_area > 0 else crop)
        np.logical_or(occ, crop, out=occ)
        accepted.append(j)
    return accepted


# Columns of the (S, 5) float64 segments of merge_panoptic_tensors ("instance_id": -1 for stuff).
SEGMENT_FIELDS = ("id", "category_id", "isthing", "score_or_area", "instance_id")


@torch.jit.script_if_tracing
def merge_panoptic_tensors(
    scores: Tensor,
    classes: Tensor,
    masks: Tensor,
    sem_seg: Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> Tuple[Tensor, Tensor]:
    """:func:`combine_semantic_and_instance_outputs` in tensor form (TorchScript, tracing, ONNX) for
    scores (N,), classes (N,), masks (N, H, W) and labels sem_seg (H, W): the (H, W) int32
    segment map and the (S, 5) float64 segments in id order (``SEGMENT_FIELDS``)."""
    H, W = sem_seg.shape[0], sem_seg.shape[1]
    panoptic_seg, things = _things_tensors(
        scores, masks.to(torch.bool), H, W, overlap_threshold, instances_score_thresh
    )
    ids = torch.arange(1, things.shape[0] + 1, device=sem_seg.device)
    segments = _segment_rows(ids, classes[things], 1.0, scores[things], things)
    if H > 0 and W > 0:
        panoptic_seg, stuff_rows = _stuff_tensors(
            sem_seg, panoptic_seg, things.shape[0], stuff_area_thresh
        )
        segments = torch.cat([segments, stuff_rows])
    return panoptic_seg, segments


def _segment_rows(
    ids: Tensor, categories: Tensor, isthing: float, values: Tensor, instances: Tensor
) -> Tensor:
    f64 = torch.float64
    flag = torch.full((ids.shape[0],), isthing, dtype=f64, device=ids.device)
    columns = [ids.to(f64), categories.to(f64), flag, values.to(f64), instances.to(f64)]
    return torch.stack(columns, dim=1)


def _things_tensors(
    scores: Tensor, masks: Tensor, H: int, W: int, overlap: float, score_thresh: float
) -> Tuple[Tensor, Tensor]:
    """The (H, W) int32 map of the things' ids and the accepted instances (T,) in id order."""
    device = masks.device
    panoptic_seg = torch.zeros((H, W), dtype=torch.int32, device=device)
    # Detectron2's order; stop at the first score below the threshold (in float64, as Python)
    sorted_inds = torch.argsort(-scores)
    below = torch.nonzero(scores[sorted_inds].to(torch.float64) < score_thresh)
    num = int(below[0, 0]) if below.shape[0] > 0 else int(sorted_inds.shape[0])
    if H == 0 or W == 0:
        num = 0
    candidates = sorted_inds[:num]
    # tight box of every mask (empty: the whole image): an instance reads and writes its box only
    rows_any, cols_any = masks.any(dim=2).to(torch.uint8), masks.any(dim=1).to(torch.uint8)
    y0s, x0s = rows_any.argmax(dim=1), cols_any.argmax(dim=1)
    y1s, x1s = H - rows_any.flip([1]).argmax(dim=1), W - cols_any.flip([1]).argmax(dim=1)
    accepted = torch.zeros(num, dtype=torch.bool, device=device)
    current_id = torch.zeros((), dtype=torch.int32, device=device)
    for k in range(num):
        i = int(candidates[k])
        y0, y1, x0, x1 = int(y0s[i]), int(y1s[i]), int(x0s[i]), int(x1s[i])
        mask, crop = masks[i, y0:y1, x0:x1], panoptic_seg[y0:y1, x0:x1]
        free = mask & (crop == 0)
        area, free_area = mask.sum(), free.sum()
        # Detectron2: an empty mask is skipped; else rejected if intersect / area > overlap
        taken = (area - free_area).to(torch.float64) / area.clamp(min=1).to(torch.float64)
        accept = (area > 0) & torch.logical_not(taken > overlap)
        current_id = current_id + accept.to(torch.int32)
        panoptic_seg[y0:y1, x0:x1] = torch.where(free & accept, current_id, crop)
        accepted[k] = accept
    return panoptic_seg, candidates[accepted]


def _stuff_tensors(
    sem_seg: Tensor, panoptic_seg: Tensor, num_things: int, stuff_area_thresh: float
) -> Tuple[Tensor, Tensor]:
    """The map with the stuff ids (labels > 0 with enough free area, ascending) and their rows."""
    device, labels = sem_seg.device, sem_seg.reshape(-1).to(torch.int64)
    free, num_labels = (panoptic_seg == 0).reshape(-1), int(labels.max()) + 1
    zeros = torch.zeros(num_labels, dtype=torch.int64, device=device)
    present = zeros.scatter_add(0, labels, torch.ones_like(labels)) > 0
    free_area = zeros.scatter_add(0, labels, free.to(torch.int64))
    keep = present & torch.logical_not(free_area.to(torch.float64) < stuff_area_thresh)
    keep = keep & (torch.arange(num_labels, device=device) > 0)
    stuff = torch.nonzero(keep)[:, 0]
    ids = torch.arange(stuff.shape[0], device=device) + (num_things + 1)
    lut = torch.zeros(num_labels, dtype=torch.int32, device=device)
    lut = lut.index_put((stuff,), ids.to(torch.int32))
    stuff_ids = torch.where(free, lut[labels], torch.zeros_like(panoptic_seg).reshape(-1))
    rows = _segment_rows(ids, stuff, 0.0, free_area[stuff], torch.full_like(stuff, -1))
    return panoptic_seg + stuff_ids.reshape_as(panoptic_seg), rows


def _segment_info(seg_id, category, isthing, value, instance=-1):
    """One dict of Detectron2's ``segments_info``: ``value`` is a thing's score, a stuff's area."""
    info = {"id": int(seg_id), "isthing": bool(isthing)}
    if isthing:
        return {**info, "score": value, "category_id": int(category), "instance_id": int(instance)}
    return {**info, "category_id": int(category), "area": int(value)}


def segments_to_info(segments):
    """Detectron2's ``segments_info`` from the (S, 5) rows of :func:`merge_panoptic_tensors`."""
    return [_segment_info(*row) for row in np.asarray(segments).tolist()]
