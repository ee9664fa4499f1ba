"""Deployment: one runner interface over PyTorch, ONNX Runtime and TensorRT, and exporters.

Layers, bottom up (nothing imports a module above it):

* `onnx_format`: the file contract (tensor names, opsets, `OnnxMetadata`).
* `runner`: the base types (`Runner`, `Prediction`, `RunnerInfo`, `TorchRunner`, heads).
* `onnx_runner`, `tensorrt` + `tensorrt_runner`: backends that read exported files.
* `graph_rewrites`, `export_onnx`: the export (registers its custom op when imported).
* `parity`: an export against PyTorch; `bench`: backends against eager.
* `open`: `open_runner`, the one place that picks a backend for a path or URL.
"""
