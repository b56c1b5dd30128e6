"""st_runtime: run sentence-transformers models exported by st-export, without PyTorch."""

__version__ = "0.1.0"

from . import errors, util
from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder, SentenceTransformer
from .kinds import load
from .manifest import FORMAT_VERSION
from .model import Model
from .multi_vector import MultiVectorEncoder
from .sparse import SparseEmbedding, SparseEncoder

__all__ = [
    "FORMAT_VERSION",
    "CrossEncoder",
    "Model",
    "MultiVectorEncoder",
    "SentenceEncoder",
    "SentenceTransformer",
    "SparseEmbedding",
    "SparseEncoder",
    "__version__",
    "errors",
    "load",
    "util",
]
