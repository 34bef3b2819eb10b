"""Throwaway databases and small providers for the benchmarks (each benchmark cleans up after itself)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latigo.interfaces import ModelExecutionProvider, ModelInformationProvider  # noqa: E402
from latigo.settings import DatabaseSettings  # noqa: E402
from latigo.storage import migrations  # noqa: E402
from latigo.storage.db import create_engine_for  # noqa: E402
from latigo.types import DEFAULT_PROJECT, ModelInfo, ModelRef, ModelStatus, PredictionFrame, PredictionRow  # noqa: E402

PG_ADMIN_URL = os.environ.get("LATIGO_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def database(kind: str, keep: bool = False, url: str | None = None) -> Iterator[sa.Engine]:
    """A migrated, empty database of `kind` ("sqlite" or "postgresql"), removed afterwards (unless `keep`);
    with `url`, that PostgreSQL database as it is (kept)."""
    if url is not None:
        engine = create_engine_for(DatabaseSettings(url=url, pool_size=40))
        yield engine
        engine.dispose()
        return
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            engine = create_engine_for(DatabaseSettings(url=f"sqlite:///{directory}/bench.db"))
            migrations.upgrade(engine)
            yield engine
            engine.dispose()
        return
    name = f"latigo_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = create_engine_for(DatabaseSettings(url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", pool_size=40))
    try:
        migrations.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        if not keep:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class BenchModels(ModelInformationProvider, ModelExecutionProvider):
    """`count` models spread over `projects` projects; execution sleeps `latency` seconds (a model server's
    cost) and returns `tags` model-output rows per 10-minute step."""

    def __init__(self, count: int, latency: float = 0.0, tags: int = 4, projects: int = 1) -> None:
        self.refs = [ModelRef(DEFAULT_PROJECT if projects == 1 else f"project-{i % projects:03d}", f"model-{i:05d}")
                     for i in range(count)]
        self.latency, self.tags = latency, [f"tag-{t}" for t in range(tags)]

    def get_model_list(self) -> list[ModelRef]:
        return list(self.refs)

    def model_exists(self, model: ModelRef) -> bool:
        return True

    def get_model_info(self, model: ModelRef) -> ModelInfo:
        return ModelInfo(model.name, tuple(self.tags), tuple(self.tags), timedelta(minutes=10), project=model.project)

    def register_model(self, model_data) -> None:
        raise NotImplementedError

    def unregister_model(self, model: ModelRef) -> None:
        raise NotImplementedError

    def get_model_status(self, model: ModelRef) -> ModelStatus:
        return ModelStatus(model.name, "ready")

    def execute_model(self, model: ModelRef, start: datetime, end: datetime) -> PredictionFrame:
        time.sleep(self.latency)
        rows, ts = [], start
        while ts < end:
            rows += [PredictionRow("model-output", tag, ts, float(i)) for i, tag in enumerate(self.tags)]
            ts += timedelta(minutes=10)
        return PredictionFrame(model.name, rows, project=model.project)
