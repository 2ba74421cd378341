from .panoptic_panet import PanopticPANet
