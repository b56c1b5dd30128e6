"""Loading by name: a hub id (``org/name``), a short name from the sentence-transformers model table
(``all-MiniLM-L6-v2``) or ``hf://org/name`` resolves to a folder in st-runtime's export cache.

* A repository whose root holds an st-runtime ``manifest.json`` (one ``st-export --push-to-hub`` made) is
  downloaded file by file, each checked against the manifest's sha256 (:mod:`.fetch`).
* Any other repository is exported once with ``st-export``, where the export extra is installed (:mod:`.export`).

``huggingface_hub`` (the ``[hub]`` extra) is imported only when a name is resolved, never for a folder.
"""

from .cache import DEFAULT_ORG, cache_root, hub_id_for, repo_id_of
from .resolve import resolve_model

__all__ = ["DEFAULT_ORG", "cache_root", "hub_id_for", "repo_id_of", "resolve_model"]
