"""A sentence-transformers model on CPU: vectors plus the token count the model really processed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Embedding:
    vector: np.ndarray  # float32, L2-normalised (as OpenAI's are)
    tokens: int  # tokens of this input after the model's own tokenizer and truncation


class Embedder:
    def __init__(self, path: str, *, threads: int | None = None, max_seq_length: int | None = None) -> None:
        # Never reach for the hub: the model is a local folder.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        if max_seq_length and self.model.max_seq_length:
            self.model.max_seq_length = min(self.model.max_seq_length, max_seq_length)
        # Renamed in sentence-transformers 6; keep working with 3.x-5.x.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (self.model.get_sentence_embedding_dimension)
        dim = get_dim()
        if not dim:
            raise ValueError(f"{path}: cannot tell the embedding dimension")
        self.dimensions: int = dim

    def count_tokens(self, texts: list[str]) -> list[int]:
        features = self.model.tokenize(texts)
        return [int(n) for n in features["attention_mask"].sum(dim=1).tolist()]

    def embed(self, texts: list[str]) -> list[Embedding]:
        """Blocking: call from a worker thread."""
        with self._torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        counts = self.count_tokens(texts)
        return [Embedding(np.asarray(v, dtype=np.float32), n) for v, n in zip(vectors, counts, strict=True)]
