"""alembic environment: the schema is latigo.storage.tables, the URL is latigo's configured one.

`latigo db ...` passes an open connection in `config.attributes["connection"]`; the plain
`alembic` CLI gets its URL from latigo's config (file + LATIGO_* environment)."""

from alembic import context
from latigo.storage.tables import Base, UtcDateTime, is_managed_elsewhere

config = context.config
target_metadata = Base.metadata


def _render_item(type_, obj, autogen_context):
    """Render latigo's UtcDateTime as the plain column type it is in the database."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Leave prediction_values' partitions to latigo.storage.partitions."""
    return not (type_ == "table" and is_managed_elsewhere(name))


def _configure(**kwargs) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode recreates tables instead.
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
        include_object=include_object,
        **kwargs,
    )
    with context.begin_transaction():
        context.run_migrations()


def _configured_engine():
    from latigo.config import load_config
    from latigo.storage.db import create_engine_for

    return create_engine_for(load_config().database)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        return
    engine = _configured_engine()
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            connection.commit()
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    from latigo.config import load_config

    _configure(url=load_config().database.url, literal_binds=True)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
