"""The domain services: what ondoki does, written against the ports and nothing else.

`sessions` and `state` keep their data in a `Cache`; `notifications` publishes and serves
per-user events over a `PubSub`; `jobs` is the job state machine every `JobQueue` adapter
shares; `imports` takes video uploads and queues the `media.import` job, which `media`
implements over the media ports; `validation` and `namespaces` hold the rules on
identifiers and cache key prefixes they all follow.
"""
