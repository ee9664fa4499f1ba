"""Deployment: one runner interface over PyTorch, ONNX Runtime and TensorRT, and exporters."""
