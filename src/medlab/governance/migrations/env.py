"""Alembic's environment for the hub database: run on the connection the caller passes."""

from alembic import context

from medlab.federation.hub import db  # noqa: F401  (the hub's tables on the metadata)
from medlab.governance.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
