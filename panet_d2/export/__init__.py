"""Deployment with Detectron2's exporters: TorchScript (scripting, tracing) and ONNX."""

from .onnx import ONNX_OPSET_VERSION, OnnxRuntimeModel, export_onnx
from .torchscript import SCRIPTING_FIELDS, ScriptableInstanceModel, script_model
from .torchscript import convert_omegaconf_attributes, convert_sync_batchnorm, deployable_copy
from .torchscript import eager_outputs, inference_function, is_panoptic, sample_inputs, trace_model

__all__ = [k for k in globals() if k[0] != "_" and k not in ("onnx", "torchscript")]
