"""stl-bench: FAN models with Self-emerging Token Labeling, and the tools around them.

Importing the package registers every FAN / STL variant in timm's model registry, so
`timm.create_model("fan_small_12_p4_hybrid_token", num_classes=10)` works afterwards.
Heavy optional packages (onnx, onnxruntime, tensorrt, gradio) are imported only by the
functions that need them.
"""
__version__ = "0.1.0"

from stl_bench import fan as _fan  # noqa: E402,F401  (registers the models in timm)
