"""Typed errors of st-export."""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every error st-export raises on purpose."""


class ModelNotFoundError(ExportError):
    """The model name or path could not be resolved to a sentence-transformers folder."""


class UnsupportedModelError(ExportError):
    """The model uses an architecture or module st-export does not know."""


class RemoteCodeError(ExportError):
    """The model needs custom code and --trust-remote-code was not given."""


class ValidationFailedError(ExportError):
    """The exported graph does not reproduce sentence-transformers' embeddings closely enough."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class ModelKindError(ExportError):
    """Which kind of model to export (st-export --kind) cannot be told from the folder, or --kind contradicts it."""
