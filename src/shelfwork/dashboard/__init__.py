"""The dashboard: server-rendered pages over the engine, served by the API's app.

`shelfwork.api.create_app` calls `mount(app)`; see routes.py for the pages.
"""

from .routes import mount

__all__ = ["mount"]
