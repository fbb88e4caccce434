"""Redis adapters: redis-py asyncio Cache and PubSub on DB 0, dramatiq JobQueue on DB 1."""

from adapters.redis.cache import RedisCache
from adapters.redis.connection import connect
from adapters.redis.pubsub import RedisPubSub

__all__ = ["RedisCache", "RedisPubSub", "connect"]
