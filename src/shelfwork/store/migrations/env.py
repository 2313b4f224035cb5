"""Alembic environment: runs migrations against the URL shelfwork passes in."""

from __future__ import annotations

from alembic import context

from shelfwork.search import include_in_autogenerate
from shelfwork.store.database import migration_engine
from shelfwork.store.models import Base

config = context.config
url = config.attributes.get("shelfwork_url") or config.get_main_option("sqlalchemy.url")


def run() -> None:
    engine = migration_engine(url)
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=Base.metadata,
            render_as_batch=conn.dialect.name == "sqlite",
            compare_type=True,
            include_object=include_in_autogenerate,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
