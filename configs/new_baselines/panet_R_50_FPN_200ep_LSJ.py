# PANet R50-FPN, LSJ, 200 epochs: the 100-epoch file with Detectron2's own 200-epoch schedule
# of the same recipe (new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py), taken from it, not retyped.
from detectron2 import model_zoo

from .panet_R_50_FPN_100ep_LSJ import dataloader, model, optimizer, train  # noqa: F401

_schedule = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py")
train.max_iter = _schedule.train.max_iter
lr_multiplier = _schedule.lr_multiplier
