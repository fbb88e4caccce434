"""Core code that only adapters use: the halves every adapter of a port shares.

`cursor` decides, for any PubSub adapter, whether a message is delivered, a duplicate or
behind a hole; `subscription` is the consumer's side of a subscription (buffering, hand-over,
resume) that both the memory and the Redis PubSub adapters are built on. Domain services never
import this package.
"""
