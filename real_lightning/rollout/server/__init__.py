"""Rollouts from ``vllm serve`` processes: :class:`VLLMServerEngine`, its HTTP client and the weight transfers."""

from real_lightning.rollout.server.client import ServerClient, ServerError
from real_lightning.rollout.server.engine import VLLMServerEngine

__all__ = ["ServerClient", "ServerError", "VLLMServerEngine"]
