# Panoptic PANet R50-FPN, 100 epochs LSJ: panet_R_50_FPN_100ep_LSJ.py (Detectron2's LSJ recipe
# with PANet's BPA, AFP and FF) plus Panoptic FPN's semantic branch and panoptic data, taken from
# Detectron2's common/ as its COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py takes them, and
# PANet's panoptic merge. Detectron2 publishes no LSJ panoptic recipe; its Panoptic FPN R50 reaches
# PQ 39.4 (1x) and 41.5 (3x) (Detectron2's MODEL_ZOO.md).
#
# The data are Detectron2's coco_2017_{train,val}_panoptic_separated (made by Detectron2's
# datasets/prepare_panoptic_fpn.py). To train from the COCO panoptic PNGs directly instead, as
# configs/COCO-PanopticSegmentation/*.yaml do: dataset names coco_2017_{train,val}_panoptic_panet
# and panet_d2.data.PanopticDatasetMapper as dataloader.train.mapper._target_ (with
# label_space=PanopticLabelSpace.from_metadata(MetadataCatalog.get(<train name>))).
from detectron2 import model_zoo

from panet_d2.modeling import PANetSemSegHead, PanopticPANet

from .panet_R_50_FPN_100ep_LSJ import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

# Semantic branch on N2..N5 (stages of 3x3 conv, 128 channels, GN, ReLU, 2x upsample, to 1/4
# scale; 53 stuff classes + 1 "other"; loss weight lambda_s = 0.5): Detectron2's, as it is.
model._target_ = PanopticPANet
model.sem_seg_head = model_zoo.get_config("common/models/panoptic_fpn.py").model.sem_seg_head
model.sem_seg_head._target_ = PANetSemSegHead  # SemSegFPNHead, checked and scriptable
# Kirillov et al.'s merge, with Detectron2's keys (yacs MODEL.PANOPTIC_FPN.COMBINE.*): instances
# by score (>= 0.5, at most 50% overlap), then stuff regions of at least 4096 pixels.
model.combine_overlap_thresh = 0.5
model.combine_stuff_area_thresh = 4096
model.combine_instances_score_thresh = 0.5

# Panoptic data (instances + semantic PNGs, empty images kept) and evaluators (box/mask AP,
# mIoU, PQ): Detectron2's, with the recipe's LSJ augmentations (FixedSizeCrop pads the semantic
# labels with 255, ignored).
_panoptic_data = model_zoo.get_config("common/data/coco_panoptic_separated.py").dataloader
dataloader.train.dataset = _panoptic_data.train.dataset
dataloader.test.dataset = _panoptic_data.test.dataset
dataloader.evaluator = _panoptic_data.evaluator
