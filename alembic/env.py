"""Alembic environment: migrations run against ``app.models.Base.metadata``.

``app.db.upgrade`` hands over an open connection in ``config.attributes["connection"]``;
without one (a plain ``alembic`` call) the engine comes from ``sqlalchemy.url`` or, failing
that, from the service settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from galmet.app.db import make_engine
from galmet.app.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from galmet.app.core.config import get_settings

    return get_settings().database_url


def run_migrations(connection: Connection) -> None:
    # Batch mode lets migrations alter tables on SQLite too (it has little ALTER TABLE).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    # SQL script output (alembic upgrade --sql), for review before a production deploy.
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    engine = make_engine(database_url())
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()
