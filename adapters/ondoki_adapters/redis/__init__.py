"""Redis adapters: redis-py asyncio Cache and PubSub on DB 0, dramatiq JobQueue on DB 1."""

from ondoki_adapters.redis.cache import RedisCache
from ondoki_adapters.redis.connection import connect
from ondoki_adapters.redis.pubsub import RedisPubSub

__all__ = ["RedisCache", "RedisPubSub", "connect"]
