"""Azure OpenAI: OpenAI's wire format at Azure's deployment URLs, with key or Entra ID auth."""

from providers.azure.adapter import AzureOpenAIAdapter
from providers.azure.config import AzureOpenAIConfig

__all__ = ["AzureOpenAIAdapter", "AzureOpenAIConfig"]
