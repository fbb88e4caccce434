"""ondoki: sessions, real-time notifications and media jobs over pluggable brokers."""

__version__ = "0.1.0"
