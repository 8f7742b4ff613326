"""The Ray Serve application: a FastAPI gateway that routes each text to the
in-process ONNX specialist or to the foundation-model deployment."""
