"""The driving adapter: Starlette HTTP routes and the WebSocket endpoint."""

from ondoki_adapters.web.app import create_app

__all__ = ["create_app"]
