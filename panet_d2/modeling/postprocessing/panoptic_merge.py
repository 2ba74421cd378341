# -*- coding: utf-8 -*-
"""Fast, exact re-implementation of Panoptic FPN's instance/semantic merge.

:func:`combine_semantic_and_instance_outputs` is a drop-in replacement for
``detectron2.modeling.meta_arch.panoptic_fpn.combine_semantic_and_instance_outputs``
(the heuristic of Kirillov et al., "Panoptic Feature Pyramid Networks"): same
signature, same inputs, and bit-for-bit the same outputs (segment map and
``segments_info``, including order, ids and python value types).

Why it is faster:

* every per-instance operation runs on the instance mask's tight bounding box instead of the
  whole image;
* CPU: the things loop works in numpy on the tensors' memory (no copies, no bool->uint8
  conversions of whole masks): a mask's box is found by short-circuiting bool ``argmax`` from
  the top and from the bottom plus one column reduction over the rows in between (about one
  read of the mask); per instance, two ``count_nonzero`` and, if accepted, one masked write of
  the id and one update of a bool "occupied" map; decisions are python arithmetic, exactly
  Detectron2's ``intersect_area * 1.0 / mask_area > overlap_threshold``;
* accelerators: the boxes come from two batched reductions, and the accept/reject decision and
  the running segment id stay on the device (0-dim tensors), so nothing synchronises per
  instance; the overlap test is evaluated in float64 exactly like Detectron2's python
  arithmetic; the number of host/device synchronisations per image is constant (about 7);
* stuff: one ``bincount`` over the pixels (bins: label if free, label + L if taken) and one
  lookup table instead of one full-image pass per semantic label (numpy on the CPU, whose
  integer reductions are much faster than torch's there).

:func:`merge_panoptic_tensors` is the same merge in tensor form (tensors in, tensors out:
segment id map and one row per segment, see ``SEGMENT_FIELDS``) for deployment: TorchScript
compiles it (scripting; tracing through ``torch.jit.script_if_tracing``, which keeps its
data-dependent loop), and the ONNX exporter turns it into an ONNX ``Loop``. It covers the model's
own inputs (boolean or 0/1 masks, non-negative integer semantic labels) with the same results as
Detectron2; :func:`segments_to_info` turns its rows into Detectron2's ``segments_info``.
"""

import math
from numbers import Real
from typing import Tuple

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError

__all__ = [
    "combine_semantic_and_instance_outputs",
    "merge_panoptic_tensors",
    "segments_to_info",
    "SEGMENT_FIELDS",
    "PanopticMerge",
]

# Integer semantic labels in [0, _DIRECT_LABEL_LIMIT) are used directly as bincount bins;
# other label sets (negative, huge, floating point) go through searchsorted.
_DIRECT_LABEL_LIMIT = 1 << 16


def combine_semantic_and_instance_outputs(
    instance_results,
    semantic_results,
    overlap_threshold,
    stuff_area_thresh,
    instances_score_thresh,
):
    """
    Merge instance and semantic predictions into a panoptic segmentation.

    Same contract (and same results, bit for bit) as Detectron2's
    ``panoptic_fpn.combine_semantic_and_instance_outputs``:

    1. instances are visited by descending score (``torch.argsort(-scores)``);
       the loop stops at the first score ``< instances_score_thresh``;
    2. an instance with an empty mask is skipped;
    3. an instance whose already-taken fraction ``intersect / area`` exceeds
       ``overlap_threshold`` is dropped; otherwise it gets the next segment id on
       its still-free pixels;
    4. every semantic label except 0 ("other" = things), in ascending order,
       gets the next id on its free pixels if that area is ``>= stuff_area_thresh``.

    Args:
        instance_results (Instances): N instances with ``scores`` (N,) float,
            ``pred_classes`` (N,) int and ``pred_masks`` (N, H, W) bool or float
            (converted with ``.to(dtype=torch.bool)``, i.e. non-zero = foreground).
            May live on any device; masks are moved to ``semantic_results.device``.
        semantic_results (Tensor): (H, W) semantic label map (contiguous ids,
            0 = things/"other").
        overlap_threshold (float), stuff_area_thresh (int/float),
        instances_score_thresh (float): see above.

    Returns:
        panoptic_seg (Tensor): (H, W) int32 on ``semantic_results.device``; 0 = void,
            1.. = segment ids.
        segments_info (list[dict]): one dict per segment, in id order. Things:
            ``{"id": int, "isthing": True, "score": float, "category_id": int,
            "instance_id": int}``; stuff: ``{"id": int, "isthing": False,
            "category_id": <python scalar of the semantic label>, "area": int}``.
    """
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    device = panoptic_seg.device
    segments_info = []
    current_segment_id = 0
    occupied = None  # CPU: (H, W) bool numpy array of the pixels the things took

    # ---------------------------------------------------------------- things
    scores = instance_results.scores.detach()
    sorted_inds = torch.argsort(-scores)  # identical call => identical tie order
    num_inst = int(sorted_inds.shape[0])
    if num_inst > 0:
        order = sorted_inds.cpu().tolist()  # sync 1
        sorted_scores = scores[sorted_inds].cpu().tolist()  # sync 2
        k = 0
        while k < num_inst and not (sorted_scores[k] < instances_score_thresh):
            k += 1
        cand = order[:k]
    else:
        cand = []

    if cand:
        pred_masks = instance_results.pred_masks
        if pred_masks.dim() != 3 or tuple(pred_masks.shape[1:]) != tuple(panoptic_seg.shape):
            raise ConfigError(
                "pred_masks must have shape (N, H, W) matching semantic_results "
                f"{tuple(panoptic_seg.shape)}; got {tuple(pred_masks.shape)}"
            )
        classes_t = instance_results.pred_classes
        cand_classes = classes_t.index_select(
            0, torch.as_tensor(cand, device=classes_t.device)
        ).tolist()  # sync 3
        if pred_masks.dtype == torch.bool and pred_masks.device == device:
            masks = pred_masks  # no copy at all
            mask_rows = cand  # candidate j -> row of `masks`
        else:
            # Convert (and move) only the candidates, one mask at a time, with the same
            # semantics as Detectron2's `.to(dtype=torch.bool)` (non-zero/NaN -> True).
            masks = torch.empty(
                (len(cand),) + tuple(panoptic_seg.shape), dtype=torch.bool, device=device
            )
            for j, inst_id in enumerate(cand):
                masks[j].copy_(pred_masks[inst_id])
            mask_rows = list(range(len(cand)))
        H, W = panoptic_seg.shape
        if device.type == "cpu":
            # CPU: numpy on the masks' memory, one instance at a time; host decisions are free
            occupied = np.zeros((H, W), dtype=bool)
            accepted = _things_cpu(
                masks, mask_rows, panoptic_seg.numpy(), occupied, overlap_threshold
            )
            accepts = []
        else:
            accepted = None
            accepts, tried = _things_device(masks, mask_rows, panoptic_seg, overlap_threshold)

        if accepts:
            flags = torch.stack(accepts).cpu().tolist()  # sync 5
            accepted = [j for j, ok in zip(tried, flags) if ok]
        if accepted:
            for j in accepted:
                current_segment_id += 1
                segments_info.append(
                    {
                        "id": current_segment_id,
                        "isthing": True,
                        "score": sorted_scores[j],
                        "category_id": cand_classes[j],
                        "instance_id": cand[j],
                    }
                )

    # ----------------------------------------------------------------- stuff
    sem = semantic_results
    stuff_np = None
    integer_labels = sem.numel() > 0 and not (
        sem.dtype == torch.bool or sem.dtype.is_floating_point or sem.dtype.is_complex
    )
    direct = None
    if integer_labels and device.type == "cpu":
        # CPU, integer labels: numpy (its reductions beat torch's here by far)
        sem_np = sem.detach().numpy()
        lo_v, hi_v = int(sem_np.min()), int(sem_np.max())
        if lo_v >= 0 and hi_v < _DIRECT_LABEL_LIMIT:
            direct = hi_v + 1
            if occupied is None:
                occupied = np.zeros(sem_np.shape, dtype=bool)
            # bin of a pixel: its label if free, label + L if occupied
            idx = np.multiply(occupied.view(np.uint8), direct, dtype=np.int64)
            np.add(idx, sem_np, out=idx, casting="unsafe")
            stuff_np = idx
    elif integer_labels:
        lo_v, hi_v = torch.stack(torch.aminmax(sem)).cpu().tolist()  # sync 6
        if lo_v >= 0 and hi_v < _DIRECT_LABEL_LIMIT:
            direct = hi_v + 1
    if direct is None or stuff_np is None:
        if occupied is not None:
            free = torch.from_numpy(occupied).logical_not_()
        else:
            free = panoptic_seg == 0
    if direct is not None:
        # Fast path (usual case: small non-negative integer labels): one bincount
        # gives, per label, its free area (bins [0, L)) and its occupied area
        # (bins [L, 2L)); a label is present iff the two sum to > 0.
        num_labels = direct
        if stuff_np is not None:
            counts = np.bincount(stuff_np.reshape(-1), minlength=2 * num_labels).tolist()
        else:
            sem_l = sem.long()
            idx = torch.where(free, sem_l, sem_l + num_labels)
            counts = torch.bincount(idx.reshape(-1), minlength=2 * num_labels)
            counts = counts.cpu().tolist()  # sync 7
        stuff = [
            (v, v, counts[v])
            for v in range(1, num_labels)
            if counts[v] + counts[v + num_labels] > 0
        ]
        num_bins = 2 * num_labels
    else:
        # General path (negative / huge / floating point / bool labels): same
        # values and python types as Detectron2's `torch.unique(...).tolist()`.
        uniq_t = torch.unique(sem)
        semantic_labels = uniq_t.cpu().tolist()  # sync 6
        num_bins = len(semantic_labels) + 1
        if any(not (lab == 0) for lab in semantic_labels):
            if sem.dtype == torch.bool:  # searchsorted has no bool kernel
                idx = torch.searchsorted(uniq_t.long(), sem.long())
            else:
                idx = torch.searchsorted(uniq_t, sem.contiguous())
            idx = torch.where(free, idx, num_bins - 1)  # occupied pixels -> extra bin
            counts = torch.bincount(idx.reshape(-1), minlength=num_bins).cpu().tolist()  # sync 7
            stuff = [(i, lab, counts[i]) for i, lab in enumerate(semantic_labels) if not (lab == 0)]
        else:
            stuff = []

    stuff_lut = None
    for b, lab, mask_area in stuff:
        if mask_area < stuff_area_thresh:
            continue
        current_segment_id += 1
        if stuff_lut is None:
            stuff_lut = np.zeros(num_bins, dtype=np.int32)
        stuff_lut[b] = current_segment_id
        segments_info.append(
            {
                "id": current_segment_id,
                "isthing": False,
                "category_id": lab,
                "area": mask_area,
            }
        )
    if stuff_lut is not None:
        # free pixels are 0 and occupied pixels map to 0: adding writes the stuff ids
        if stuff_np is not None:
            pan_np = panoptic_seg.numpy()
            pan_np += stuff_lut.take(stuff_np)
        else:
            panoptic_seg += torch.from_numpy(stuff_lut).to(device)[idx]
    return panoptic_seg, segments_info


def _things_device(masks, mask_rows, panoptic_seg, overlap_threshold):
    """Things on an accelerator: every decision stays on the device (no per-instance sync).

    Returns the 0-dim int32 accept flags and the candidate indices they belong to."""
    H, W = panoptic_seg.shape
    device = panoptic_seg.device
    if H > 0 and W > 0:
        # tight boxes of all masks: two batched reductions (uint8 max is much
        # faster than bool any on CPU), one transfer
        u8 = masks.view(torch.uint8)
        row_any = u8.amax(dim=2).cpu().numpy() > 0  # sync 4
        col_any = u8.amax(dim=1).cpu().numpy() > 0
        nonempty = row_any.any(axis=1)
        y0 = row_any.argmax(axis=1)
        y1 = H - row_any[:, ::-1].argmax(axis=1)
        x0 = col_any.argmax(axis=1)
        x1 = W - col_any[:, ::-1].argmax(axis=1)
    else:
        nonempty = np.zeros(masks.shape[0], dtype=bool)

    # Running segment id kept on the device: no per-instance synchronisation.
    cur = torch.zeros((), dtype=torch.int32, device=device)
    accepts, tried = [], []
    for j, r in enumerate(mask_rows):
        if not nonempty[r]:  # mask_area == 0
            continue
        ys, ye, xs, xe = int(y0[r]), int(y1[r]), int(x0[r]), int(x1[r])
        mask = masks[r, ys:ye, xs:xe]
        pan_crop = panoptic_seg[ys:ye, xs:xe]
        free = mask & (pan_crop == 0)
        area = torch.count_nonzero(mask)
        free_area = torch.count_nonzero(free)
        # Detectron2: `intersect_area * 1.0 / mask_area > overlap_threshold`,
        # evaluated here in float64 as well (exact same IEEE operations).
        ratio = (area - free_area).to(torch.float64) / area.to(torch.float64)
        accept = (ratio > overlap_threshold).logical_not_().to(torch.int32)
        cur = cur + accept
        # free pixels are 0, so adding writes the id (or 0 if rejected)
        pan_crop.add_(free * (cur * accept))
        accepts.append(accept)
        tried.append(j)

    return accepts, tried


# Rows of the first block when searching a mask's last row from the bottom (see _mask_box);
# each further block is twice as tall.
_ROW_BLOCK = 16


def _mask_box(m, u, H, W):
    """Tight box ``(y0, y1, x0, x1)`` of the (H, W) C-contiguous bool array ``m`` (``u``: its
    uint8 view), or None if empty. Reads from the top down to the first foreground pixel, from
    the bottom up to the last one (short-circuiting bool ``argmax`` on blocks of rows), then
    only the rows in between for the columns: about one pass over the mask in all."""
    flat = m.reshape(-1)
    a = int(flat.argmax())
    if not flat[a]:
        return None
    y0 = a // W
    e, block = H, _ROW_BLOCK
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


def _things_cpu(masks, mask_rows, pan, occupied, overlap_threshold):
    """Things on the CPU, in numpy on the tensors' memory, each instance on its mask's box.

    ``pan`` (H, W) int32 and ``occupied`` (H, W) bool are written in place. Same decisions as
    Detectron2 (python ints and floats, the same expression). Returns the accepted candidates."""
    H, W = pan.shape
    accepted = []
    if H == 0 or W == 0:
        return accepted
    masks_np = masks.numpy()
    scratch = np.empty(H * W, dtype=bool)
    cur = 0
    for j, r in enumerate(mask_rows):
        m = masks_np[r]
        if not m.flags.c_contiguous:
            m = np.ascontiguousarray(m)
        box = _mask_box(m, m.view(np.uint8), H, W)
        if box is None:  # mask_area == 0
            continue
        ys, ye, xs, xe = box
        crop = m[ys:ye, xs:xe]
        occ = occupied[ys:ye, xs:xe]
        tmp = scratch[: (ye - ys) * (xe - xs)].reshape(ye - ys, xe - xs)
        mask_area = int(np.count_nonzero(crop))
        np.logical_and(crop, occ, out=tmp)
        intersect_area = int(np.count_nonzero(tmp))
        if intersect_area * 1.0 / mask_area > overlap_threshold:  # Detectron2's very test
            continue
        cur += 1
        if intersect_area > 0:
            np.greater(crop, occ, out=tmp)  # mask & ~occupied
            np.copyto(pan[ys:ye, xs:xe], cur, where=tmp)
        else:
            np.copyto(pan[ys:ye, xs:xe], cur, where=crop)
        np.logical_or(occ, crop, out=occ)
        accepted.append(j)
    return accepted


# Columns of the per-segment tensor of :func:`merge_panoptic_tensors` (float64, exact for the
# float32 scores and for ids, labels and areas below 2**53). "score_or_area": the instance's score
# for a thing, the segment's area in pixels for stuff; "instance_id": -1 for stuff.
SEGMENT_FIELDS = ("id", "category_id", "isthing", "score_or_area", "instance_id")


@torch.jit.script_if_tracing
def merge_panoptic_tensors(
    scores: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor,
    sem_seg: torch.Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`combine_semantic_and_instance_outputs` in tensor form: tensors in, tensors out, in the
    subset of Python that TorchScript compiles and that the ONNX exporter turns into ONNX ops (a
    ``Loop`` for the instances: no Python lists, no ``tolist``).

    Args:
        scores (Tensor): (N,) float instance scores.
        classes (Tensor): (N,) int instance classes.
        masks (Tensor): (N, H, W) instance masks, bool (or numbers, non-zero = foreground).
        sem_seg (Tensor): (H, W) semantic labels, integers >= 0 (0 = "other", the things).
        overlap_threshold, stuff_area_thresh, instances_score_thresh: the merge thresholds.

    Returns:
        panoptic_seg (Tensor): (H, W) int32, 0 = void, 1.. = segment ids.
        segments (Tensor): (S, 5) float64, one row per segment in id order, columns
            ``SEGMENT_FIELDS``: id, category_id, isthing (1.0 / 0.0), score (things) or area
            (stuff), instance_id (index into the N instances; -1 for stuff).
    """
    H, W = sem_seg.shape[0], sem_seg.shape[1]
    device = sem_seg.device
    panoptic_seg = torch.zeros((H, W), dtype=torch.int32, device=device)
    masks = masks.to(torch.bool)

    # Things, by descending score (Detectron2's very call, so ties break the same way); stop at
    # the first score below the threshold (compared in float64, as Python compares floats).
    sorted_inds = torch.argsort(-scores)
    sorted_scores = scores[sorted_inds].to(torch.float64)
    below = torch.nonzero(sorted_scores < instances_score_thresh)
    num = int(below[0, 0]) if below.shape[0] > 0 else int(sorted_inds.shape[0])
    if H == 0 or W == 0:
        num = 0
    candidates = sorted_inds[:num]
    # tight box of every mask (empty: the whole image), so that an instance reads and writes
    # only its box
    rows_any = masks.any(dim=2).to(torch.uint8)
    cols_any = masks.any(dim=1).to(torch.uint8)
    y0s, x0s = rows_any.argmax(dim=1), cols_any.argmax(dim=1)
    y1s, x1s = H - rows_any.flip([1]).argmax(dim=1), W - cols_any.flip([1]).argmax(dim=1)
    accepted = torch.zeros(num, dtype=torch.bool, device=device)
    current_id = torch.zeros((), dtype=torch.int32, device=device)
    for k in range(num):
        i = int(candidates[k])
        y0, y1, x0, x1 = int(y0s[i]), int(y1s[i]), int(x0s[i]), int(x1s[i])
        mask = masks[i, y0:y1, x0:x1]
        crop = panoptic_seg[y0:y1, x0:x1]
        free = mask & (crop == 0)
        area = mask.sum()
        free_area = free.sum()
        # Detectron2: an empty mask is skipped; else rejected if
        # intersect_area * 1.0 / mask_area > overlap_threshold (in float64)
        overlap = (area - free_area).to(torch.float64) / area.clamp(min=1).to(torch.float64)
        accept = (area > 0) & torch.logical_not(overlap > overlap_threshold)
        current_id = current_id + accept.to(torch.int32)
        panoptic_seg[y0:y1, x0:x1] = torch.where(free & accept, current_id, crop)
        accepted[k] = accept
    things = candidates[accepted]
    num_things = things.shape[0]
    segments = torch.stack(
        [
            torch.arange(1, num_things + 1, device=device).to(torch.float64),
            classes[things].to(torch.float64),
            torch.ones(num_things, dtype=torch.float64, device=device),
            sorted_scores[:num][accepted],
            things.to(torch.float64),
        ],
        dim=1,
    )

    # Stuff: every label present in sem_seg except 0, ascending, takes its free pixels if they
    # are at least stuff_area_thresh (Detectron2 visits torch.unique(sem_seg) one by one).
    if H > 0 and W > 0:
        labels = sem_seg.reshape(-1).to(torch.int64)
        free = (panoptic_seg == 0).reshape(-1)
        num_labels = int(labels.max()) + 1
        zeros = torch.zeros(num_labels, dtype=torch.int64, device=device)
        present = zeros.scatter_add(0, labels, torch.ones_like(labels)) > 0
        free_area = zeros.scatter_add(0, labels, free.to(torch.int64))
        keep = present & torch.logical_not(free_area.to(torch.float64) < stuff_area_thresh)
        keep = keep & (torch.arange(num_labels, device=device) > 0)
        stuff = torch.nonzero(keep)[:, 0]
        n = stuff.shape[0]
        ids = torch.arange(n, device=device) + (num_things + 1)
        lut = torch.zeros(num_labels, dtype=torch.int32, device=device)
        lut = lut.index_put((stuff,), ids.to(torch.int32))
        stuff_ids = torch.where(free, lut[labels], torch.zeros_like(panoptic_seg).reshape(-1))
        panoptic_seg = panoptic_seg + stuff_ids.reshape(H, W)
        stuff_rows = torch.stack(
            [
                ids.to(torch.float64),
                stuff.to(torch.float64),
                torch.zeros(n, dtype=torch.float64, device=device),
                free_area[stuff].to(torch.float64),
                torch.full((n,), -1.0, dtype=torch.float64, device=device),
            ],
            dim=1,
        )
        segments = torch.cat([segments, stuff_rows])
    return panoptic_seg, segments


def segments_to_info(segments):
    """
    Detectron2's ``segments_info`` (list[dict], the same keys, values and Python types as
    :func:`combine_semantic_and_instance_outputs`) from the (S, 5) rows of
    :func:`merge_panoptic_tensors` (a tensor or a numpy array, e.g. an ONNX Runtime output).
    """
    info = []
    for seg_id, category, isthing, value, instance in np.asarray(segments).tolist():
        if isthing:
            info.append(
                {
                    "id": int(seg_id),
                    "isthing": True,
                    "score": value,
                    "category_id": int(category),
                    "instance_id": int(instance),
                }
            )
        else:
            info.append(
                {
                    "id": int(seg_id),
                    "isthing": False,
                    "category_id": int(category),
                    "area": int(value),
                }
            )
    return info


# Detectron2 config keys of the thresholds, for error messages.
_CFG_KEYS = {
    "overlap_threshold": "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
    "stuff_area_thresh": "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    "instances_score_thresh": "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
}


def _check_number(name, value, lo, hi):
    key = _CFG_KEYS[name]
    allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = value >= lo and (hi is None or value <= hi)
    if not ok:
        raise ConfigError(
            f"Invalid panoptic merge setting {key} ({name}) = {value!r}: "
            f"must be a number in the range {allowed}."
        )
    return value


class PanopticMerge(nn.Module):
    """The panoptic merge with validated thresholds, as a module without parameters.

    ``PanopticMerge.from_config(cfg)`` reads ``cfg.MODEL.PANOPTIC_FPN.COMBINE``
    (OVERLAP_THRESH, STUFF_AREA_LIMIT, INSTANCES_CONFIDENCE_THRESH). Thresholds must
    be in [0, 1] and the area limit >= 0, otherwise ``ValueError`` naming the config
    key, the value and the allowed range.

    * ``merge(instances, sem_seg)`` -> ``(panoptic_seg (H, W) int32, segments_info)``, see
      :func:`combine_semantic_and_instance_outputs` (eager; under ``torch.jit.trace``, e.g.
      Detectron2's ``FlopCountAnalysis``, computed by the tensor form).
    * ``merge.merge_tensors(scores, classes, masks, sem_seg)`` -> ``(panoptic_seg, segments)``,
      see :func:`merge_panoptic_tensors` (scripting, tracing, ONNX).
    """

    def __init__(self, overlap_threshold=0.5, stuff_area_thresh=4096, instances_score_thresh=0.5):
        super().__init__()
        self.overlap_threshold = _check_number("overlap_threshold", overlap_threshold, 0, 1)
        self.stuff_area_thresh = _check_number("stuff_area_thresh", stuff_area_thresh, 0, None)
        self.instances_score_thresh = _check_number(
            "instances_score_thresh", instances_score_thresh, 0, 1
        )

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return cls(
            overlap_threshold=c.OVERLAP_THRESH,
            stuff_area_thresh=c.STUFF_AREA_LIMIT,
            instances_score_thresh=c.INSTANCES_CONFIDENCE_THRESH,
        )

    @torch.jit.unused
    def forward(self, instance_results, semantic_results):
        if torch.jit.is_tracing():  # a traced graph holds tensors and compiled code only
            panoptic_seg, segments = self.merge_tensors(
                instance_results.scores,
                instance_results.pred_classes,
                instance_results.pred_masks.to(semantic_results.device),
                semantic_results,
            )
            return panoptic_seg, segments_to_info(segments)
        return combine_semantic_and_instance_outputs(
            instance_results,
            semantic_results,
            self.overlap_threshold,
            self.stuff_area_thresh,
            self.instances_score_thresh,
        )

    def merge_tensors(
        self,
        scores: torch.Tensor,
        classes: torch.Tensor,
        masks: torch.Tensor,
        sem_seg: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`merge_panoptic_tensors` with this module's thresholds."""
        return merge_panoptic_tensors(
            scores,
            classes,
            masks,
            sem_seg,
            float(self.overlap_threshold),
            float(self.stuff_area_thresh),
            float(self.instances_score_thresh),
        )

    def extra_repr(self):
        return (
            f"overlap_threshold={self.overlap_threshold}, "
            f"stuff_area_thresh={self.stuff_area_thresh}, "
            f"instances_score_thresh={self.instances_score_thresh}"
        )
