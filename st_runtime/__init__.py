"""st_runtime: run sentence-transformers models exported by st-export, without PyTorch."""

__version__ = "0.1.0"

from . import errors, util
from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder, SentenceTransformer
from .manifest import FORMAT_VERSION
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
    "__version__",
]
