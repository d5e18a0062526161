"""Deployment: inference forms, export formats and runners (ONNX, packed binary), benchmarks."""
