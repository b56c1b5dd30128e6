"""Every error st_runtime raises on purpose. Each message says what is wrong, what was
expected, and how to fix it."""

from __future__ import annotations


class StRuntimeError(Exception):
    """Base class of all st_runtime errors."""


class ModelFolderError(StRuntimeError, FileNotFoundError):
    """The exported model folder or its manifest is missing."""


class ManifestError(StRuntimeError, ValueError):
    """The manifest is unreadable or does not follow the schema."""


class ManifestVersionError(ManifestError):
    """The manifest was written by a newer st-runtime than the one installed."""


class ArtifactMissingError(StRuntimeError, FileNotFoundError):
    """A file listed in the manifest is not in the folder."""


class ArtifactCorruptError(StRuntimeError, ValueError):
    """A file listed in the manifest has the wrong size or checksum."""


class GraphLoadError(StRuntimeError, RuntimeError):
    """onnxruntime could not load a graph (opset too new, damaged file, ...)."""


class ProviderUnavailableError(StRuntimeError, RuntimeError):
    """An execution provider was requested that this onnxruntime cannot use."""


class VariantError(StRuntimeError, ValueError):
    """The requested graph variant is missing or failed its accuracy gate."""


class UnsupportedInputError(StRuntimeError, TypeError):
    """An input to encode has a type this model cannot embed."""


class OpsetTooNewError(GraphLoadError):
    """The graph uses an ONNX opset newer than the installed onnxruntime supports."""


class ModelKindError(StRuntimeError, ValueError):
    """The folder holds another kind of model (an embedding model given to CrossEncoder, or the reverse)."""


class OutputNotExportedError(StRuntimeError, ValueError):
    """The call asks for a graph output this export does not have (it was made by an older st-export)."""


class InputTooLongError(StRuntimeError, ValueError):
    """A text has more tokens than the model's limit, in a call that asked not to truncate."""


class ModelNameError(ModelFolderError):
    """A model name (hub id or short name) could not be resolved to a folder: not on the hub, not cached while
    offline, or huggingface_hub missing."""


class ExportUnavailableError(ModelNameError):
    """The named model must be exported first, and this environment lacks the export extra."""


class ExportFailedError(StRuntimeError, RuntimeError):
    """st-export, run to fill the export cache, failed; nothing was added to the cache."""
