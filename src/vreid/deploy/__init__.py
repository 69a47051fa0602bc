"""Using a trained model outside training: ONNX export and the ONNX Runtime backend, the HTTP service."""
