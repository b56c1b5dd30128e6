"""Embed the sentence-transformers documentation's example sentences with st_runtime (no torch)."""

import sys

from st_runtime import SentenceTransformer  # the one-line switch from sentence_transformers

model = SentenceTransformer(sys.argv[1] if len(sys.argv) > 1 else "exported_models/all-MiniLM-L6-v2")
sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
embeddings = model.encode(sentences)
print(model, embeddings.shape)
similarities = model.similarity(embeddings, embeddings)
for i in range(len(sentences)):
    for j in range(i + 1, len(sentences)):
        print(f"{similarities[i, j]:.4f}  {sentences[i]!r} <-> {sentences[j]!r}")
heavy = [m for m in ("torch", "transformers", "sentence_transformers", "onnx") if m in sys.modules]
print("heavy modules imported:", heavy or "none")
