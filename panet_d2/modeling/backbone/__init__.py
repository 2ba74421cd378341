from .pafpn import PAFPN, build_resnet_pafpn_backbone
