"""Adapters: the ports' implementations (memory, Redis) and the web entry point."""
