"""The multi-adapter inference engine: ONNX export, backends, batching."""
