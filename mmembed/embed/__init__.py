"""`mmembed embed`: exported tower + folder / table / shards -> embedding matrix plus ids (resumable)."""

from mmembed.embed.runner import EmbedSummary, embed
from mmembed.embed.store import read_embeddings

__all__ = ["EmbedSummary", "embed", "read_embeddings"]
