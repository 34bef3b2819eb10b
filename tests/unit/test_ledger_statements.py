"""The ledger's fused statements repeat texts that also run alone: they must stay the same texts."""

from sqlalchemy.dialects import postgresql

from latigo.storage import ledger_statements as sql
from latigo.storage.predictions import _PG_UNNEST


def test_rows_and_done_is_the_predictions_upsert_and_the_done_mark():
    finish = str(sql.FINISH.compile(dialect=postgresql.dialect()))
    combined = f"WITH written AS ({_PG_UNNEST} RETURNING 1), follow_up AS ({finish}) SELECT count(*) FROM written"
    assert combined == sql.ROWS_AND_DONE_POSTGRESQL


def test_claim_and_start_is_the_queue_claim_and_the_start():
    claim = sql.QUEUE_POSTGRESQL.claim.text
    start = sql.START.text
    changes = start[len("UPDATE tasks "):start.index(" WHERE ")]
    assert sql.CLAIM_AND_START_POSTGRESQL.text == (
        f"WITH claimed AS ({claim}), started AS (UPDATE tasks {changes} FROM claimed WHERE tasks.task_id = "
        "claimed.task_id AND tasks.state IN ('queued', 'running') RETURNING tasks.task_id, tasks.attempts, "
        "tasks.lost) SELECT claimed.task_id, claimed.body, claimed.deliveries, started.attempts, started.lost "
        "FROM claimed LEFT JOIN started ON started.task_id = claimed.task_id")
    assert "tasks.state IN ('queued', 'running')" in start


def test_each_dialect_settles_a_row_only_under_its_claim():
    guard = "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries"
    for statements in (sql.QUEUE_POSTGRESQL, sql.QUEUE_SQLITE):
        for statement in (statements.nack, statements.release, statements.renew, statements.ack):
            assert statement.text.endswith(guard)
