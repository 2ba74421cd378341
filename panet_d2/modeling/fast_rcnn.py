"""The box predictor's inference with a per-class NMS that traces (docs/design.md)."""

from typing import List, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from ..errors import check_finite


# UPSTREAM-WORKAROUND traced-batched-nms: torchvision 0.29 batched_nms, when traced, always runs
# one NMS over all candidates (docs/design.md).
def per_class_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, num_classes: int
) -> Tensor:
    """torchvision's ``batched_nms`` of boxes (R, 4), scores (R,) and classes (R,) in
    [0, num_classes) as one ``nms`` per class in every mode: kept indices by decreasing score."""
    boxes = boxes.float()  # as Detectron2's batched_nms (float16 lacks the range)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for c in range(num_classes):
        index = torch.where(classes == c)[0]
        keep[index[nms(boxes[index], scores[index], iou_threshold)]] = True
    kept = torch.where(keep)[0]
    # ties by index in every backend (ONNX's TopK does so; ONNX export takes no stable sort)
    if not torch.jit.is_scripting():
        if torch.onnx.is_in_onnx_export():
            return kept[scores[kept].topk(kept.shape[0])[1]]
    return kept[scores[kept].sort(descending=True, stable=True)[1]]


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, Tensor]:
    """Detectron2's ``fast_rcnn_inference_single_image`` (same arguments and results) with
    :func:`per_class_nms`, and no data-dependent branch (it traces)."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid][:, :-1]  # drop the background column
    num_classes, num_bbox_reg_classes = scores.shape[1], boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_bbox_reg_classes, 4)  # (R, K or 1, 4)
    candidates = scores > score_thresh  # (R, K)
    index = candidates.nonzero()  # (R', 2): proposal, class
    boxes = boxes[index[:, 0], 0] if num_bbox_reg_classes == 1 else boxes[candidates]
    scores = scores[candidates]
    keep = per_class_nms(boxes, scores, index[:, 1], nms_thresh, num_classes)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    kept = index[keep]  # (D, 2): proposal, class of each detection
    detections = Instances(
        image_shape, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=kept[:, 1]
    )
    return detections, kept[:, 0]


class PANetFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` whose inference runs :func:`per_class_nms` in every mode."""

    def inference(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]):
        check_finite("The box predictor's scores and box deltas", torch.cat(predictions, 1))
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        score_thresh, nms_thresh = self.test_score_thresh, self.test_nms_thresh
        topk = self.test_topk_per_image
        results = [
            fast_rcnn_inference_single_image(b, s, p.image_size, score_thresh, nms_thresh, topk)
            for b, s, p in zip(boxes, scores, proposals)
        ]
        return [r[0] for r in results], [r[1] for r in results]
