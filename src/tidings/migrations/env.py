"""Alembic environment: runs against the engine that Tidings hands over (``Database.migrate``)."""

from __future__ import annotations

from alembic import context

from tidings.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: build the engine from TIDINGS_DATABASE_URL
    from tidings.config import Settings
    from tidings.db import make_engine

    engine = make_engine(Settings().database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
