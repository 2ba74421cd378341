"""Deployment with Detectron2's exporters: TorchScript (scripting, tracing) and ONNX."""

from .onnx import ONNX_OPSET_VERSION, OnnxRuntimeModel, export_onnx
from .torchscript import *  # noqa: F401, F403
from .torchscript import __all__ as _torchscript

__all__ = ["ONNX_OPSET_VERSION", "OnnxRuntimeModel", "export_onnx"] + _torchscript
