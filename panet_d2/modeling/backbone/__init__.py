"""PANet's backbone: FPN with bottom-up path augmentation (``pafpn.py``)."""

from .pafpn import PAFPN, build_resnet_pafpn_backbone
