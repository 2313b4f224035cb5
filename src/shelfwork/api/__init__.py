"""The HTTP API (FastAPI): `create_app(engine)` builds it, `serve(settings, host, port)` runs it."""

from .app import create_app

__all__ = ["create_app"]
