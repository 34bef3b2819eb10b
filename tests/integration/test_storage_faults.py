"""A connection lost in the middle of a task's write is an infrastructure fault (redelivered), never the
task's failure: including in the statements that go through a raw DBAPI cursor for speed."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.storage.db import write_transaction
from latigo.storage.faults import is_infrastructure_fault
from latigo.storage.partitions import Partitions
from latigo.storage.predictions import COPY_FROM_ROWS, write_predictions
from latigo.types import PredictionFrame, PredictionRow

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def frame(rows: int) -> PredictionFrame:
    return PredictionFrame("m", [PredictionRow("model-output", f"tag-{i % 10}", T0 + (i // 10) * timedelta(minutes=10),
                                               float(i)) for i in range(rows)])


@pytest.mark.parametrize("rows", [30, COPY_FROM_ROWS + 10], ids=["unnest", "copy"])
def test_a_connection_killed_before_the_write_is_an_infrastructure_fault(pg_engine, rows):
    Partitions(pg_engine).ensure(T0 - timedelta(days=1), T0 + timedelta(days=30))
    with pytest.raises(sa.exc.DBAPIError), write_transaction(pg_engine) as connection:  # the rollback fails too
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with pg_engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        try:
            write_predictions(connection, frame(rows))
        except Exception as exc:  # what the write itself raises, before the rollback's own error
            raised = exc
            raise
    assert is_infrastructure_fault(raised), repr(raised)
