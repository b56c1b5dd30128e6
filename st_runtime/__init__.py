"""st_runtime: run sentence-transformers models exported by st-export, without PyTorch."""

__version__ = "0.1.0"

from . import errors, util
from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder, SentenceTransformer
from .kinds import load
from .manifest import FORMAT_VERSION
from .model import Model
from .sparse import SparseEmbedding, SparseEncoder

__all__ = [
    "CrossEncoder",
    "SentenceEncoder",
    "SentenceTransformer",
    "SparseEmbedding",
    "SparseEncoder",
    "errors",
    "util",
    "FORMAT_VERSION",
    "Model",
    "__version__",
    "load",
]
