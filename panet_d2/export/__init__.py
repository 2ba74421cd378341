# -*- coding: utf-8 -*-
"""
Deployment with Detectron2's exporters (``detectron2.export``): TorchScript by scripting or tracing,
and ONNX; what the exported models compute: docs/deployment.md.
"""

from .onnx import ONNX_OPSET_VERSION, OnnxRuntimeModel, export_onnx
from .scripting import SCRIPTING_FIELDS, ScriptableInstanceModel, script_model
from .tracing import convert_omegaconf_attributes, convert_sync_batchnorm, deployable_copy
from .tracing import eager_outputs, inference_function, is_panoptic, sample_inputs, trace_model

__all__ = [k for k in globals() if k[0] != "_" and k not in ("onnx", "scripting", "tracing")]
