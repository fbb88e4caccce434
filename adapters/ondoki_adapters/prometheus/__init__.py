"""Prometheus exposition for processes that serve no HTTP API of their own (the worker)."""
