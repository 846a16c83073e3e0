"""Engines, sessions and migrations for the service's database (SQLite or PostgreSQL).

``upgrade(url)`` applies the migrations in ``alembic/`` (alembic upgrade head) with a
configuration built here, so it works from any directory and from an installed package; it
runs at service start and as ``galmet db upgrade``.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from functools import partial
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from galmet.errors import GalmetError

# How long a SQLite writer waits for another one before giving up ("database is locked").
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed number: the PostgreSQL advisory lock that serialises concurrent upgrades.
_MIGRATION_LOCK_ID = 0x6A1E7
# alembic's context and op are process-wide proxies: one migration run at a time per process.
_upgrade_lock = threading.Lock()


SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def normalize_url(url: str | URL) -> URL:
    """The URL with a driver we ship: plain ``postgresql://`` means psycopg 3.

    SQLAlchemy's default PostgreSQL driver is psycopg2, which galmet does not install.
    """
    url = make_url(url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        # The cache's idempotent upserts exist for these two only (app.cache._insert_once).
        raise ArgumentError(
            f"database {url.get_backend_name()!r} is not supported: use SQLite or PostgreSQL"
        )
    return url


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``, set up for a service with many threads writing at once."""
    url = normalize_url(url)
    # NaN and infinity are not JSON: PostgreSQL rejects them, so refuse them on SQLite too.
    json_serializer = partial(json.dumps, allow_nan=False)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, json_serializer=json_serializer)

    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Threads of the service share pooled connections, so lift the same-thread check.
    engine = create_engine(
        url, connect_args={"check_same_thread": False}, json_serializer=json_serializer
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer; busy_timeout: a second writer waits its turn
        # instead of failing at once; foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def safe_url(url: str | URL) -> str:
    """``url`` with its password hidden, for logs and messages."""
    return normalize_url(url).render_as_string(hide_password=True)


def sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine``; rows stay readable after commit (they go back to other threads)."""
    return sessionmaker(engine, expire_on_commit=False)


def check(engine: Engine) -> bool:
    """Whether the database answers a ``SELECT 1`` (for /readyz)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; /readyz reports it, never raises
        return False
    return True


def script_location() -> Path:
    """The migrations folder: ``alembic/`` of a source checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "alembic" / "env.py").is_file():
        return checkout / "alembic"
    # A wheel installs alembic/ as data files, in <prefix>/share/galmet/alembic (see
    # pyproject.toml); the installed file list says where <prefix> is for any install scheme.
    dist = importlib.metadata.distribution("galmet")
    for file in dist.files or ():
        if file.as_posix().endswith("share/galmet/alembic/env.py"):
            return Path(str(dist.locate_file(file))).resolve().parent
    raise GalmetError("galmet's database migrations are not installed; reinstall galmet")


def alembic_config(url: str | URL) -> Config:
    """An alembic configuration for ``url`` built in code (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    # ConfigParser interpolates %, which URL-encoded passwords contain.
    url = normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the latest); a no-op when it is.

    All migrations run in one transaction, so a failure leaves the database as it was.
    Concurrent upgrades (threads, processes, service replicas) take turns: the first migrates,
    the others then find the database at ``revision``.
    """
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    try:
        with _upgrade_lock, engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # The lock ends with this transaction.
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
            config = alembic_config(url)
            # env.py runs the migrations on this connection (our engine, our pragmas).
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _begin_immediate(engine: Engine) -> None:
    """Make transactions on this SQLite engine take the write lock at BEGIN and cover DDL.

    By default the sqlite3 driver opens transactions itself, lazily and around DML only; then
    two processes could both find no tables and both create them.
    """

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The service's database: an engine, its sessions, and ``run`` for async callers.

    Database calls are synchronous SQLAlchemy; ``await db.run(fn, *args)`` runs
    ``fn(session, *args)`` in a worker thread with a session of its own, so the event loop
    keeps serving.
    """

    def __init__(self, url: str | URL) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker_for(self.engine)

    async def run(self, fn, *args, **kwargs):
        """``fn(session, *args, **kwargs)`` in a worker thread, with a session of its own."""
        from anyio import to_thread

        def call():
            with self.sessions() as session:
                return fn(session, *args, **kwargs)

        return await to_thread.run_sync(call)

    async def check(self) -> str:
        """``ok``, or why the database does not answer (for /readyz)."""
        from anyio import to_thread

        try:
            ok = await to_thread.run_sync(check, self.engine)
        except Exception as exc:  # any failure means "not ready", with its reason
            return f"error: {exc}".splitlines()[0][:200]
        return "ok" if ok else "no answer"

    def dispose(self) -> None:
        self.engine.dispose()
