"""The ports: what the core needs from the outside world, as `typing.Protocol`s."""

from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobContext, JobHandler, JobQueue
from ondoki.ports.pubsub import PubSub, Subscription

__all__ = ["Cache", "JobContext", "JobHandler", "JobQueue", "PubSub", "Subscription"]
