# Quick LazyConfig schedule: new_baselines/panet_R_50_FPN_100ep_LSJ.py (Detectron2's LSJ recipe
# with PANet's BPA, AFP and FF; SyncBN everywhere, from scratch) shrunk to a small ResNet-18 on
# the generated dataset (panet_synth_train: 64 images of 192x192, 3 thing classes; generated on
# first use into $PANET_D2_DATASETS or ~/.cache/panet_d2), evaluated by COCOEvaluator (box and
# mask AP) on panet_synth_val (16 images). Trains and evaluates in minutes on a CPU, with
# Detectron2's own script:
#   python3 /path/to/detectron2/tools/lazyconfig_train_net.py \
#       --config-file configs/quick_schedules/panet_R_18_synth_lazy.py
# (tools/lazyconfig_train_net.py of this repository runs the same where Detectron2 was installed
# without its tools/.) The recipe's structure is kept: LSJ (ResizeScale + FixedSizeCrop, the scale
# range narrowed for 12 epochs), SyncBN / NaiveSyncBatchNorm (plain BN in one process), PANet's
# layers, the 4conv1fc box head; the RPN has one conv (below); sizes, widths and the schedule are
# smaller. Measured on 2 busy CPU cores: 5 min 54 s, box AP 13.5, mask AP 10.8 (the yacs
# panet_R_18_synth_instance.yaml, no jitter and no head norms, reaches 32.5 / 36.8 after the same
# 200 iterations).
import torch

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..new_baselines.panet_R_50_FPN_100ep_LSJ import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

# ResNet-18 (BasicBlock, which has no stride_in_1x1), 64-channel pyramid, small heads.
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
# One RPN conv, as Detectron2's default RPN: the recipe's two 64-channel convs (initialised with
# std 0.01) scale their input down and learn too slowly from scratch in this short schedule.
model.proposal_generator.head.conv_dims = [-1]
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (500, 300)
model.proposal_generator.post_nms_topk = (200, 100)
model.proposal_generator.batch_size_per_image = 128
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape.channels = 64
model.roi_heads.box_head.conv_dims = [32, 32, 32, 32]
model.roi_heads.box_head.fc_dims = [128]
model.roi_heads.box_predictor.input_shape.channels = 128
model.roi_heads.box_predictor.test_topk_per_image = 50
model.roi_heads.mask_head.input_shape.channels = 64
model.roi_heads.mask_head.conv_dims = [32, 32, 32, 32, 32]
model.roi_heads.mask_head.ff_conv_dims = (32, 16)

# The generated dataset: LSJ at 192 pixels (its image size), masks as bitmasks (RLE in the json).
image_size = 192
dataloader.train.dataset.names = "panet_synth_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(
        min_scale=0.8, max_scale=1.25, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.instance_mask_format = "bitmask"
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "panet_synth_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=320),
]
dataloader.test.num_workers = 0

# 200 iterations of 4 images (12.5 epochs), the LR steps where the recipe has them (89%, 96%);
# 0.02: the recipe's 0.1 for 64 images is 0.00625 for 4, which learns too slowly here.
train.max_iter = 200
lr_multiplier.scheduler.milestones = [178, 193]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 50 / train.max_iter
optimizer.lr = 0.02

train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.amp.enabled = False
train.ddp.fp16_compression = False
train.eval_period = 0  # evaluate once, after training
train.checkpointer.period = 100  # model_0000099.pth, model_0000199.pth, model_final.pth
train.log_period = 20
train.seed = 42
train.output_dir = "./output/quick_schedules/panet_R_18_synth_lazy"
