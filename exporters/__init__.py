"""st-export: turn a sentence-transformers model into self-contained ONNX graphs for st_runtime."""

from .errors import ExportError, ModelKindError, ModelNotFoundError, UnsupportedModelError, ValidationFailedError
from .export import export_model

__all__ = [
    "ExportError",
    "ModelKindError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "ValidationFailedError",
    "export_model",
]
