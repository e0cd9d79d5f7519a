"""Exporting trained models for deployment (`histodetect export`): ONNX with the preprocessing
inside the graph and the ModelSpec in its metadata."""

from histodetect.export.onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
