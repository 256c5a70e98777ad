"""Replicate: chat over the predictions API, with cold-start and compute-time reporting."""

from providers.replicate.adapter import ReplicateAdapter
from providers.replicate.config import ReplicateConfig

__all__ = ["ReplicateAdapter", "ReplicateConfig"]
