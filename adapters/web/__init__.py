"""The driving adapter: Starlette HTTP routes and the WebSocket endpoint."""

from adapters.web.app import create_app

__all__ = ["create_app"]
