"""In-memory adapters: the embedded default and the test doubles, with Redis's semantics."""

from adapters.memory.cache import MemoryCache

__all__ = ["MemoryCache"]
