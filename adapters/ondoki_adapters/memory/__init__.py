"""In-memory adapters: the embedded default and the test doubles, with Redis's semantics."""

from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.memory.pubsub import MemoryPubSub

__all__ = ["MemoryCache", "MemoryPubSub"]
