# PANet R50-FPN with Detectron2's strongest Mask R-CNN recipe: its new_baselines
# mask_rcnn_R_50_FPN_100ep_LSJ.py (large-scale jitter, SyncBN everywhere, trained from scratch,
# 100 epochs) as it is, plus what PANet changes: the bottom-up path (BPA), the all-level poolers
# and the per-level first layers of adaptive feature pooling (AFP), fully-connected fusion (FF) in
# the mask head, and the recipe's norms on those new layers.
#
#   python3 /path/to/detectron2/tools/lazyconfig_train_net.py --num-gpus 8 \
#       --config-file configs/new_baselines/panet_R_50_FPN_100ep_LSJ.py
#
# Importing panet_d2 (below) registers its datasets and models: Detectron2's script runs this
# file as it is. Detectron2's recipe reaches R50 box/mask AP 44.6/40.3 (Detectron2's MODEL_ZOO.md).
from detectron2 import model_zoo

from panet_d2.modeling import (
    PAFPN,
    AdaptiveFeaturePooler,
    PANetConvFCHead,
    PANetFastRCNNOutputLayers,
    PANetMaskHead,
    PANetROIHeads,
    PANetRPNHead,
)

# Detectron2's recipe: dataloader (LSJ), model (Mask R-CNN: SyncBN, 4conv1fc box head, 2-conv
# RPN), optimizer, lr_multiplier (100 epochs) and train (from scratch, AMP).
_recipe = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader = _recipe.dataloader
lr_multiplier = _recipe.lr_multiplier
model = _recipe.model
optimizer = _recipe.optimizer
train = _recipe.train

# BPA: N2 = P2, N_{i+1} = conv3x3(conv3x3_s2(N_i) + P_{i+1}); every new conv followed by the
# recipe's backbone norm and a ReLU (paper). N6 = max-pool of N5 feeds the RPN, as P6 did.
model.backbone._target_ = PAFPN
model.backbone.bpa_norm = model.backbone.norm  # "SyncBN"
model.backbone.bpa_activation = "relu"

# RPN head: the recipe's (2 convs), its outputs checked at inference (NaN or inf raise).
model.proposal_generator.head._target_ = PANetRPNHead

# AFP: every RoI pooled from every level N2..N5 (no level assignment), 2 samples per bin side as
# in the authors' release (with 0, "adaptive", a large RoI takes hundreds of samples per bin on N2).
model.roi_heads._target_ = PANetROIHeads
for _pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
    _pooler._target_ = AdaptiveFeaturePooler
    _pooler.sampling_ratio = 2
NUM_LEVELS = 4  # len(model.roi_heads.box_in_features): p2..p5, i.e. N2..N5

# Box predictor: Detectron2's, whose inference runs one NMS per class in traced and ONNX graphs too
# (as PANetROIHeads builds it from yacs configs; docs/deployment.md).
model.roi_heads.box_predictor._target_ = PANetFastRCNNOutputLayers

# Box head: the recipe's 4conv1fc head is the paper's heavier head (HHD): with AFP its conv1 is
# per level (each level normalised by its own copy of the recipe's head norm, NaiveSyncBatchNorm
# with stats_mode="N"), then max fusion. As in Detectron2's recipe, no norm after the fc (the
# paper's MBN has one: box_head.fc_norm = box_head.conv_norm).
model.roi_heads.box_head._target_ = PANetConvFCHead
model.roi_heads.box_head.num_levels = NUM_LEVELS
model.roi_heads.box_head.fuse_type = "max"
model.roi_heads.box_head.fuse_position = "after_first_layer"

# Mask head: per-level conv1, max fusion before conv2; FF: a short path from conv3 (two 3x3
# convs with the head's norm, 256 -> 128 channels, one fc to a 28x28 class-agnostic mask) summed
# with every class's FCN mask logits.
model.roi_heads.mask_head._target_ = PANetMaskHead
model.roi_heads.mask_head.num_levels = NUM_LEVELS
model.roi_heads.mask_head.fuse_type = "max"
model.roi_heads.mask_head.fuse_position = "after_first_layer"
model.roi_heads.mask_head.ff_enabled = True
model.roi_heads.mask_head.ff_start_layer = 3
model.roi_heads.mask_head.ff_fuse_type = "sum"
model.roi_heads.mask_head.ff_conv_dims = (256, 128)
model.roi_heads.mask_head.ff_fc_activation = False
model.roi_heads.mask_head.ff_fc_init = "xavier"
