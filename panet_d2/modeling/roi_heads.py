"""PANet's ROI heads: Detectron2's :class:`StandardROIHeads` with adaptive feature pooling."""

import torch

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from ..config import AFP_MAX_SAMPLING_RATIO, AFP_POOLER_TYPES
from ..errors import ConfigError, check_choice, check_in_features
from .box_head import PANetConvFCHead
from .fast_rcnn import PANetFastRCNNOutputLayers
from .mask_head import PANetMaskHead
from .poolers import AdaptiveFeaturePooler


@ROI_HEADS_REGISTRY.register()
class PANetROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` whose poolers, with MODEL.AFP.ENABLED, pool every RoI from every
    level (:class:`AdaptiveFeaturePooler`) for heads that fuse the (M, L, C, H, W) grids."""

    # TorchScript constants, as detectron2.export annotates StandardROIHeads (not inherited)
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features, backbone = list(cfg.MODEL.ROI_HEADS.IN_FEATURES), cfg.MODEL.BACKBONE.NAME
        key = "MODEL.ROI_HEADS.IN_FEATURES"
        pyramid = "RoI pooling (and adaptive feature pooling)"
        check_in_features(key, in_features, input_shape, "the backbone " + backbone, pyramid)
        if not cfg.MODEL.AFP.ENABLED:
            return super().from_config(cfg, input_shape)
        ratio = cfg.MODEL.AFP.POOLER_SAMPLING_RATIO
        if not isinstance(ratio, int) or not 0 <= ratio <= AFP_MAX_SAMPLING_RATIO:
            raise ConfigError(
                f"Invalid config value MODEL.AFP.POOLER_SAMPLING_RATIO={ratio!r}; allowed: 0 "
                f"(adaptive) or 1 to {AFP_MAX_SAMPLING_RATIO} samples per bin side (authors' "
                "release: 2; each bin costs ratio^2 samples from every level)."
            )
        if len(in_features) < 2:
            raise ConfigError(
                "MODEL.AFP.ENABLED=True pools every RoI from every pyramid level and needs at "
                f"least 2 levels in MODEL.ROI_HEADS.IN_FEATURES, got {in_features} (backbone "
                f"{backbone}). Use a pyramid backbone (build_resnet_pafpn_backbone / "
                "build_resnet_fpn_backbone) with IN_FEATURES like ['p2', 'p3', 'p4', 'p5'], or "
                "set MODEL.AFP.ENABLED=False."
            )
        for node, head_cls in (("ROI_BOX_HEAD", PANetConvFCHead), ("ROI_MASK_HEAD", PANetMaskHead)):
            name = cfg.MODEL[node].NAME
            if name != head_cls.__name__ and (node == "ROI_BOX_HEAD" or cfg.MODEL.MASK_ON):
                raise ConfigError(
                    "MODEL.AFP.ENABLED=True needs MODEL.{}.NAME={!r} (a head that fuses the "
                    "per-level grids), got {!r}.".format(node, head_cls.__name__, name)
                )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        # the predictor with per-class NMS when traced; weights and random stream as Detectron2's
        with torch.random.fork_rng(devices=[]):
            predictor = PANetFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        predictor.load_state_dict(ret["box_predictor"].state_dict())
        ret["box_predictor"] = predictor
        if cfg.MODEL.AFP.ENABLED:
            ret["box_pooler"] = cls._all_level_pooler("ROI_BOX_HEAD", cfg, input_shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        head, init = ret.get("mask_head"), cfg.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT
        if init != "normal" and head is not None and not isinstance(head, PANetMaskHead):
            raise ConfigError(
                "MODEL.ROI_MASK_HEAD.PREDICTOR_INIT={!r} is read by PANetMaskHead only, got "
                "MODEL.ROI_MASK_HEAD.NAME={!r}: set the name to 'PANetMaskHead' or the init to "
                "'normal'.".format(init, cfg.MODEL.ROI_MASK_HEAD.NAME)
            )
        if cfg.MODEL.AFP.ENABLED and ret.get("mask_pooler") is not None:
            ret["mask_pooler"] = cls._all_level_pooler("ROI_MASK_HEAD", cfg, input_shape)
        return ret

    @staticmethod
    def _all_level_pooler(head, cfg, input_shape):
        """The AFP pooler of ``cfg.MODEL[head]`` (axis-aligned boxes: no rotated RoIAlign)."""
        head_cfg = cfg.MODEL[head]
        check_choice(f"MODEL.{head}.POOLER_TYPE", head_cfg.POOLER_TYPE, AFP_POOLER_TYPES)
        ratio = cfg.MODEL.AFP.POOLER_SAMPLING_RATIO
        if head_cfg.POOLER_SAMPLING_RATIO not in (0, ratio):  # 0: Detectron2's default
            raise ConfigError(
                f"MODEL.{head}.POOLER_SAMPLING_RATIO={head_cfg.POOLER_SAMPLING_RATIO!r}: with AFP "
                f"on, the poolers take MODEL.AFP.POOLER_SAMPLING_RATIO (now {ratio}); set that."
            )
        return AdaptiveFeaturePooler(
            output_size=head_cfg.POOLER_RESOLUTION,
            scales=tuple(1.0 / input_shape[k].stride for k in cfg.MODEL.ROI_HEADS.IN_FEATURES),
            sampling_ratio=ratio,
            pooler_type=head_cfg.POOLER_TYPE,
        )
