"""AWS Bedrock Runtime: Converse / ConverseStream for chat, InvokeModel for Titan and Cohere embeddings."""

from providers.bedrock.adapter import BedrockAdapter
from providers.bedrock.config import BedrockConfig

__all__ = ["BedrockAdapter", "BedrockConfig"]
