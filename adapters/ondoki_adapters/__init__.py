"""Adapters: the ports' implementations (memory, Redis, media) and the web entry point."""
