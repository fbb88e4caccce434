"""In-memory adapters: the embedded default and the test doubles, with Redis's semantics."""

from adapters.memory.cache import MemoryCache
from adapters.memory.pubsub import MemoryPubSub

__all__ = ["MemoryCache", "MemoryPubSub"]
