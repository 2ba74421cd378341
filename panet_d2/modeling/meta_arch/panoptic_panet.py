# -*- coding: utf-8 -*-
"""
Panoptic PANet: PANet's instance branch and Panoptic FPN's semantic branch on one shared augmented
pyramid, trained jointly with L = lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem, and merged
into a panoptic segmentation.
"""

from typing import Dict, List, Tuple

import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances

from ..postprocessing.panoptic_merge import PanopticMerge, merge_panoptic_tensors

__all__ = ["PanopticPANet"]


@META_ARCH_REGISTRY.register()
class PanopticPANet(PanopticFPN):
    """
    :class:`PanopticFPN` (backbone, RPN, ROI heads and semantic head on one backbone pass; loss
    weights MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT and MODEL.SEM_SEG_HEAD.LOSS_WEIGHT) with this
    project's faster panoptic merge (same results as Detectron2's). Outputs per image, as
    :class:`PanopticFPN`: "instances", "sem_seg" (NUM_CLASSES, H, W) and "panoptic_seg" (segment
    map (H, W) int32, segments_info).

    Labels follow Detectron2's Panoptic FPN ("panoptic_separated" convention): thing classes
    0..T-1; semantic labels 0 = "other" (thing pixels) and 1..S = stuff classes. The model reads
    no dataset catalog: a dataset with another convention (e.g. Cityscapes trainIds) is converted
    by the data side (``panet_d2.data.PanopticDatasetMapper`` for training, the project's
    panoptic evaluator for evaluation).

    Deployment: :meth:`inference_tensors` is the same inference, panoptic merge included, as
    tensors in and out; a scripted model's ``forward`` returns it, and tracing and ONNX export
    record it (``panet_d2.export``).

    Post-processing (resize to the output size, then merge), one route per need, all equal:

    * eager :meth:`inference`: Detectron2's resizing, then the fast CPU merge
      (:func:`~panet_d2.modeling.postprocessing.panoptic_merge.combine_semantic_and_instance_outputs`,
      13x Detectron2's speed on the CPU; ``segments_info`` as Detectron2 returns it);
    * :meth:`inference_tensors`, eager or traced: Detectron2's resizing (its functions trace with
      dynamic output sizes), then the exportable tensor merge;
    * :meth:`inference_tensors` scripted: :func:`panoptic_postprocess`, the same resizing in the
      Python that TorchScript compiles (Detectron2's two functions do not script), then the
      tensor merge.
    """

    @configurable
    def __init__(self, *, panoptic_merge: PanopticMerge, **kwargs):
        """
        Args:
            panoptic_merge (PanopticMerge): the merge heuristic with its thresholds.
            kwargs: see :class:`PanopticFPN`.
        """
        super().__init__(**kwargs)
        self.panoptic_merge = panoptic_merge

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # L = lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem. PanopticFPN.from_config
        # scales the keys of box_predictor.loss_weight, which Detectron2 builds with
        # "loss_box_reg" only, so L_cls would stay unweighted: give it lambda_i too.
        ret["roi_heads"].box_predictor.loss_weight.setdefault(
            "loss_cls", cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        )
        ret["panoptic_merge"] = PanopticMerge.from_config(cfg)
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        As :meth:`PanopticFPN.forward`. A TorchScript-compiled model (scripting) returns
        :meth:`inference_tensors` instead, as Detectron2's scripted RetinaNet returns its raw
        outputs: TorchScript has no type for ``segments_info``.
        """
        if torch.jit.is_scripting():
            return self.inference_tensors(batched_inputs)
        if self.training and batched_inputs and "sem_seg" not in batched_inputs[0]:
            raise ValueError(
                "PanopticPANet training needs a 'sem_seg' target in every input, and this batch "
                "has none: the dataset mapper produced no semantic labels. Use "
                "panet_d2.data.PanopticDatasetMapper (train_net.py does), which makes them from "
                "the panoptic PNGs, or a dataset with sem_seg_file_name (Detectron2's "
                "*_panoptic_separated datasets)."
            )
        return super().forward(batched_inputs)

    def _raw_inference(
        self, batched_inputs: List[Dict[str, torch.Tensor]]
    ) -> Tuple[List[Instances], torch.Tensor, List[Tuple[int, int]]]:
        """
        Both branches on one backbone pass, before any postprocessing: detector outputs at the
        network's input size, semantic logits (N, NUM_CLASSES, H', W') of the padded batch, and
        the image sizes.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        return detector_results, sem_seg_results, images.image_sizes

    def inference(self, batched_inputs, do_postprocess: bool = True):
        """
        Args:
            batched_inputs (list[dict]): as :meth:`PanopticFPN.inference`.
            do_postprocess (bool): resize to the input resolution and merge.

        Returns:
            list[dict] with "instances", "sem_seg" and "panoptic_seg"; or, without postprocessing,
            the raw (list[Instances], list[Tensor]) as :class:`PanopticFPN`.
        """
        # PanopticFPN.inference calls Detectron2's merge function by its module-level name (no
        # hook to swap it): take the raw outputs and postprocess them here.
        detector_results, sem_seg_results, _ = self._raw_inference(batched_inputs)
        if not do_postprocess:
            return detector_results, sem_seg_results
        return [
            self._postprocess_one(inputs, instances, sem_seg)
            for inputs, instances, sem_seg in zip(batched_inputs, detector_results, sem_seg_results)
        ]

    def _postprocess_one(self, inputs, instances, sem_seg):
        """
        Resize one image's raw outputs to its original size (``inputs["height"]``, ``["width"]``)
        and merge them. ``sem_seg``: (NUM_CLASSES, h, w) logits at the network's input size.
        """
        image_size = tuple(inputs["image"].shape[-2:])
        height, width = inputs.get("height", image_size[0]), inputs.get("width", image_size[1])
        instances, sem_seg = _resize(instances, sem_seg, image_size, height, width)
        return {
            "sem_seg": sem_seg,
            "instances": instances,
            "panoptic_seg": self.panoptic_merge(instances, sem_seg.argmax(dim=0)),
        }

    def inference_tensors(
        self, batched_inputs: List[Dict[str, torch.Tensor]]
    ) -> List[Dict[str, torch.Tensor]]:
        """
        :meth:`inference` in tensor form, for deployment: what a scripted model's ``forward``
        returns, and what tracing (:class:`detectron2.export.TracingAdapter`) and ONNX export
        record. Equal to :meth:`inference`, the panoptic merge included.

        Args:
            batched_inputs (list[dict]): "image" (3, H, W); optionally "height" and "width" (ints,
                or 0-dim int tensors when scripted or traced): the output size, as in
                :meth:`inference` (default: the size of "image").

        Returns:
            list[dict[str, Tensor]], one per image, at the output size (h, w): "panoptic_seg"
            (h, w) int32 and "segments" (S, 5) float64, one row per segment
            (``panoptic_merge.SEGMENT_FIELDS``; ``segments_to_info`` turns them into
            ``segments_info``); "sem_seg" (NUM_CLASSES, h, w) logits; and the instances as
            :func:`detector_postprocess` leaves them: "pred_boxes" (R, 4), "scores" (R,),
            "pred_classes" (R,), "pred_masks" (R, h, w) bool.
        """
        detector_results, sem_seg_results, image_sizes = self._raw_inference(batched_inputs)
        merge = self.panoptic_merge
        results: List[Dict[str, torch.Tensor]] = []
        for k, instances in enumerate(detector_results):
            image_size = image_sizes[k]
            if not isinstance(image_size, torch.Tensor):  # a Tensor (2,) when tracing
                image_size = torch.tensor([image_size[0], image_size[1]])
            output_size = image_size
            inputs = batched_inputs[k]
            if "height" in inputs and "width" in inputs:
                height, width = inputs["height"], inputs["width"]
                if isinstance(height, torch.Tensor) and isinstance(width, torch.Tensor):
                    output_size = torch.stack([height.reshape(()), width.reshape(())])
                else:  # eager, ints
                    output_size = torch.tensor([height, width])
            if torch.jit.is_scripting():
                result = panoptic_postprocess(
                    instances.pred_boxes.tensor,
                    instances.scores,
                    instances.pred_classes,
                    instances.pred_masks,
                    sem_seg_results[k],
                    image_size,
                    output_size,
                    float(merge.overlap_threshold),
                    float(merge.stuff_area_thresh),
                    float(merge.instances_score_thresh),
                )
            else:  # eager or traced: Detectron2's own postprocessing
                result = self._postprocess_tensors(
                    instances, sem_seg_results[k], image_size, output_size
                )
            results.append(result)
        return results

    @torch.jit.unused
    def _postprocess_tensors(self, instances, sem_seg, image_size, output_size):
        """:meth:`_postprocess_one` in the form of :meth:`inference_tensors` (eager, tracing)."""
        if torch.jit.is_tracing():  # sizes as traced tensors: they stay dynamic
            height, width = output_size[0], output_size[1]
        else:
            image_size, (height, width) = tuple(image_size.tolist()), output_size.tolist()
        instances, sem_seg = _resize(instances, sem_seg, image_size, height, width)
        panoptic_seg, segments = self.panoptic_merge.merge_tensors(
            instances.scores, instances.pred_classes, instances.pred_masks, sem_seg.argmax(dim=0)
        )
        return {
            "panoptic_seg": panoptic_seg,
            "segments": segments,
            "sem_seg": sem_seg,
            "pred_boxes": instances.pred_boxes.tensor,
            "scores": instances.scores,
            "pred_classes": instances.pred_classes,
            "pred_masks": instances.pred_masks,
        }


def _resize(instances, sem_seg, image_size, height, width):
    """
    Detectron2's postprocessing of one image's raw outputs, shared by the eager and traced routes:
    ``detector_postprocess`` (boxes scaled and clipped to (height, width), masks pasted) and
    ``sem_seg_postprocess`` (padding cropped, logits (NUM_CLASSES, h, w) resized). Under tracing
    ``height`` and ``width`` may be 0-dim tensors, and they stay dynamic in the graph.
    """
    return (
        detector_postprocess(instances, height, width),
        sem_seg_postprocess(sem_seg, image_size, height, width),
    )


def panoptic_postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    roi_masks: torch.Tensor,
    sem_seg: torch.Tensor,
    image_size: torch.Tensor,
    output_size: torch.Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> Dict[str, torch.Tensor]:
    """
    :meth:`PanopticPANet._postprocess_one` in tensor form: Detectron2's ``detector_postprocess``
    (boxes scaled to the output size, clipped, empty ones dropped, masks pasted) and
    ``sem_seg_postprocess`` (padding cropped, logits resized), then
    :func:`merge_panoptic_tensors`, with the same operations in the same order (so the same
    results), in the Python that TorchScript compiles: what a scripted model runs (those two
    Detectron2 functions are not scriptable; eager and traced models call them).

    Args:
        boxes (R, 4), scores (R,), classes (R,), roi_masks (R, 1, M, M): detector outputs at the
            input size.
        sem_seg (NUM_CLASSES, H', W'): semantic logits of the padded image.
        image_size, output_size (Tensor): (2,) ints, height and width of the input image and of
            the outputs.
    """
    image_h, image_w = int(image_size[0]), int(image_size[1])
    height, width = int(output_size[0]), int(output_size[1])
    boxes = Boxes(boxes.clone())
    boxes.scale(float(width) / float(image_w), float(height) / float(image_h))
    boxes.clip((height, width))
    keep = boxes.nonempty()
    boxes = Boxes(boxes.tensor[keep])
    scores, classes = scores[keep], classes[keep]
    masks = paste_masks_in_image(roi_masks[keep][:, 0, :, :], boxes.tensor, (height, width), 0.5)
    sem_seg = F.interpolate(
        sem_seg[:, :image_h, :image_w].expand(1, -1, -1, -1),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )[0]
    panoptic_seg, segments = merge_panoptic_tensors(
        scores,
        classes,
        masks,
        sem_seg.argmax(dim=0),
        overlap_threshold,
        stuff_area_thresh,
        instances_score_thresh,
    )
    return {
        "panoptic_seg": panoptic_seg,
        "segments": segments,
        "sem_seg": sem_seg,
        "pred_boxes": boxes.tensor,
        "scores": scores,
        "pred_classes": classes,
        "pred_masks": masks,
    }
