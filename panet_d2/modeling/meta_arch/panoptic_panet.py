"""Panoptic PANet: PANet's instance branch and Panoptic FPN's semantic branch on one pyramid."""

from numbers import Real
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances

from ...errors import ConfigError, check_finite
from ..postprocessing import combine_semantic_and_instance_outputs, merge_panoptic_tensors

# PanopticFPN's merge thresholds (LazyConfig: model.<attribute>): yacs key, largest value (or None)
COMBINE_KEYS = {
    "combine_overlap_thresh": ("MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 1),
    "combine_stuff_area_thresh": ("MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", None),
    "combine_instances_score_thresh": ("MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 1),
}


@META_ARCH_REGISTRY.register()
class PanopticPANet(PanopticFPN):
    """:class:`PanopticFPN` (same inputs, outputs, losses and ``combine_*``) with the project's
    faster merge, and :meth:`inference_tensors` for deployment (docs/design.md)."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for attribute, (key, hi) in COMBINE_KEYS.items():
            value = getattr(self, attribute)
            ok = isinstance(value, Real) and not isinstance(value, bool)
            if not (ok and value >= 0 and (hi is None or value <= hi)):  # NaN fails value >= 0
                allowed = f"in the range [0, {hi}]" if hi is not None else ">= 0"
                raise ConfigError(
                    f"Invalid panoptic merge setting {key} (LazyConfig: model.{attribute}) = "
                    f"{value!r}: must be a number {allowed}."
                )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # PanopticFPN scales box_predictor.loss_weight's keys ("loss_box_reg" only): L_cls too
        loss_weight = ret["roi_heads"].box_predictor.loss_weight
        loss_weight.setdefault("loss_cls", cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT)
        return ret

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """As :meth:`PanopticFPN.forward`; a scripted model returns :meth:`inference_tensors`."""
        if torch.jit.is_scripting():
            return self.inference_tensors(batched_inputs)
        if self.training:
            self._check_targets(batched_inputs)
        return super().forward(batched_inputs)

    @torch.jit.unused
    def _check_targets(self, batched_inputs: List[Dict[str, Tensor]]):
        """A ValueError naming the first training input without 'instances' or 'sem_seg'."""
        lacking = [x for x in batched_inputs if "sem_seg" not in x or "instances" not in x]
        if lacking:
            what = "'sem_seg'" if "sem_seg" not in lacking[0] else "'instances'"
            raise ValueError(
                f"PanopticPANet training needs 'instances' and 'sem_seg' targets in every input, "
                f"and {len(lacking)} of this batch's {len(batched_inputs)} have no {what} (the "
                f"first: {lacking[0].get('file_name', 'no file_name')!r}). Use panet_d2.data."
                "PanopticDatasetMapper (train_net.py does), which makes them from the panoptic "
                "PNGs, or a dataset with annotations and sem_seg_file_name (Detectron2's "
                "*_panoptic_separated)."
            )

    def merge_thresholds(self) -> Tuple[float, float, float]:
        """The merge's overlap, stuff area and instance score thresholds, as floats."""
        return (
            float(self.combine_overlap_thresh),
            float(self.combine_stuff_area_thresh),
            float(self.combine_instances_score_thresh),
        )

    def _raw_inference(
        self, batched_inputs: List[Dict[str, Tensor]]
    ) -> Tuple[List[Instances], Tensor, List[Tuple[int, int]]]:
        """Detections, semantic logits (N, NUM_CLASSES, H', W') of the padded batch, image sizes."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        check_finite("The semantic head's logits", sem_seg_results)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        return detector_results, sem_seg_results, images.image_sizes

    def inference(self, batched_inputs, do_postprocess: bool = True):
        """As :meth:`PanopticFPN.inference`, with the project's merge."""
        detector_results, sem_seg_results, _ = self._raw_inference(batched_inputs)
        if not do_postprocess:
            return detector_results, sem_seg_results
        return list(map(self._postprocess_one, batched_inputs, detector_results, sem_seg_results))

    def _postprocess_one(self, inputs, instances, sem_seg):
        image_size = tuple(inputs["image"].shape[-2:])
        height, width = inputs.get("height", image_size[0]), inputs.get("width", image_size[1])
        instances = detector_postprocess(instances, height, width)
        sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
        panoptic_seg = combine_semantic_and_instance_outputs(
            instances, sem_seg.argmax(dim=0), *self.merge_thresholds()
        )
        return {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": panoptic_seg}

    def inference_tensors(self, batched_inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        """:meth:`inference` in tensor form (scripting, tracing, ONNX export). Inputs: "image"
        (3, H, W), optionally "height", "width" (ints or 0-dim tensors). Returns per image, at
        the output size (h, w): "panoptic_seg" (h, w) int32, "segments" (S, 5) float64
        (``SEGMENT_FIELDS``), "sem_seg" (NUM_CLASSES, h, w) and the detector's outputs."""
        detector_results, sem_seg_results, image_sizes = self._raw_inference(batched_inputs)
        results: List[Dict[str, Tensor]] = []
        overlap, stuff_area, score = self.merge_thresholds()
        for k, instances in enumerate(detector_results):
            image_size = image_sizes[k]
            if not isinstance(image_size, Tensor):  # a Tensor (2,) when tracing
                image_size = torch.tensor([image_size[0], image_size[1]])
            output_size, inputs = image_size, batched_inputs[k]
            if "height" in inputs and "width" in inputs:
                height, width = inputs["height"], inputs["width"]
                if isinstance(height, Tensor) and isinstance(width, Tensor):
                    output_size = torch.stack([height.reshape(()), width.reshape(())])
                else:  # eager, ints
                    output_size = torch.tensor([height, width])
            sem_seg = sem_seg_results[k]
            if torch.jit.is_scripting():
                boxes, scores = instances.pred_boxes.tensor, instances.scores
                classes, masks = instances.pred_classes, instances.pred_masks
                boxes, scores, classes, masks, sem_seg = panoptic_postprocess(
                    boxes, scores, classes, masks, sem_seg, image_size, output_size
                )
            else:  # eager or traced: Detectron2's own postprocessing
                boxes, scores, classes, masks, sem_seg = self._postprocess_tensors(
                    instances, sem_seg, image_size, output_size
                )
            panoptic_seg, segments = merge_panoptic_tensors(
                scores, classes, masks, sem_seg.argmax(dim=0), overlap, stuff_area, score
            )
            result = {"panoptic_seg": panoptic_seg, "segments": segments, "sem_seg": sem_seg}
            result.update({"pred_boxes": boxes, "scores": scores, "pred_classes": classes})
            result["pred_masks"] = masks
            results.append(result)
        return results

    @torch.jit.unused
    def _postprocess_tensors(self, instances, sem_seg, image_size, output_size):
        if torch.jit.is_tracing():  # sizes as traced tensors: they stay dynamic
            height, width = output_size[0], output_size[1]
        else:
            image_size, (height, width) = tuple(image_size.tolist()), output_size.tolist()
        instances = detector_postprocess(instances, height, width)
        sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
        scores, classes, masks = instances.scores, instances.pred_classes, instances.pred_masks
        return instances.pred_boxes.tensor, scores, classes, masks, sem_seg


def panoptic_postprocess(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    roi_masks: Tensor,
    sem_seg: Tensor,
    image_size: Tensor,
    output_size: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:meth:`PanopticPANet._postprocess_tensors` as TorchScript compiles it: Detectron2's
    ``detector_postprocess`` and ``sem_seg_postprocess`` (which do not script) op for op, for
    boxes (R, 4), scores (R,), classes (R,), roi_masks (R, 1, M, M) at the input size, sem_seg
    (NUM_CLASSES, H', W') of the padded image; image_size, output_size (2,): (height, width).
    Returns them (boxes, scores, classes, masks, sem_seg) at the output size."""
    image_h, image_w = int(image_size[0]), int(image_size[1])
    height, width = int(output_size[0]), int(output_size[1])
    boxes = Boxes(boxes.clone())
    boxes.scale(float(width) / float(image_w), float(height) / float(image_h))
    boxes.clip((height, width))
    keep = boxes.nonempty()
    boxes = Boxes(boxes.tensor[keep])
    scores, classes = scores[keep], classes[keep]
    masks = paste_masks_in_image(roi_masks[keep][:, 0, :, :], boxes.tensor, (height, width), 0.5)
    sem_seg = sem_seg[:, :image_h, :image_w].expand(1, -1, -1, -1)
    sem_seg = F.interpolate(sem_seg, size=(height, width), mode="bilinear", align_corners=False)[0]
    return boxes.tensor, scores, classes, masks, sem_seg
