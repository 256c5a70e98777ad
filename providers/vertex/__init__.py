"""Google Vertex AI: Gemini generateContent / streamGenerateContent for chat, predict for text embeddings."""

from providers.vertex.adapter import VertexAdapter
from providers.vertex.config import VertexConfig

__all__ = ["VertexAdapter", "VertexConfig"]
