"""model_summary: one row per model, kept by the database as tasks are enqueued and finished

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 19:00:00

The overview lists every model with its newest window, its newest outcome (done or failed), its last
done window and its latest total-anomaly-confidence. Read from the ledger, that is three probes of the
tasks index and one of prediction_values per model on every refresh (about 36,000 at 9,000 models,
0.3 s on a warm cache, more with stale statistics); read from this table it is one scan of 9,000 rows.

Triggers keep it, so every path that writes the ledger (enqueue, the executor's fused finish statement,
fail, `latigo tasks retry` and `cancel`) keeps it right without a line of its own, inside the writer's
transaction. A done task written again (its `done` statement run once more, as the finish path does when
its rows needed new series first) reads its confidence again. Concurrent writers merge rather than overwrite (the newest window and outcome win, whichever
commits first), and each statement upserts its models in (project, model) order, so two that share
models never deadlock. On PostgreSQL the enqueue trigger is per statement (a transition table: one upsert for
thousands of tasks) and the others per row behind a WHEN; SQLite has only row triggers.

The upgrade fills the table from the ledger; the downgrade drops it with the triggers.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TOTAL = 'total-anomaly-confidence'


def _newest(column: str) -> str:
    """`column` set to the later of the row's and the statement's (either may be NULL)."""
    return (f"{column} = {{greatest}}(COALESCE({{m}}.{column}, EXCLUDED.{column}), "
            f"COALESCE(EXCLUDED.{column}, {{m}}.{column}))")


def _with_newest(column: str, at: str) -> str:
    """`column` taken from the statement when its `at` is at least the row's."""
    return (f"{column} = CASE WHEN EXCLUDED.{at} IS NOT NULL AND ({{m}}.{at} IS NULL OR EXCLUDED.{at} >= {{m}}.{at}) "
            f"THEN EXCLUDED.{column} ELSE {{m}}.{column} END")


MERGE = "\nON CONFLICT (project, model) DO UPDATE SET\n    " + ",\n    ".join((
    _newest("newest_window_end"), _with_newest("outcome", "outcome_window_end"), _newest("outcome_window_end"),
    _newest("last_done_end"), _with_newest("confidence", "confidence_at"), _newest("confidence_at"))) + "\n"
"""How a row already there takes a statement's news: each newest value wins (so a writer that commits
second with older news does not undo the first)."""

NEWEST_CONFIDENCE = f"""
SELECT v.{{column}} FROM series s JOIN prediction_values v ON v.series_id = s.id
WHERE s.project = {{row}}.project AND s.model = {{row}}.model AND s.output = '{TOTAL}' AND s.tag = '{TOTAL}'
  AND v.ts >= {{row}}.window_start AND v.ts < {{row}}.window_end
ORDER BY v.ts DESC LIMIT 1"""
"""A done task's newest total-anomaly-confidence value, inside its window."""

RECOMPUTE = """
UPDATE {table} SET
    outcome = (SELECT t.state FROM tasks t WHERE t.project = {m}.project AND t.model = {m}.model
               AND t.state IN ('done', 'failed') ORDER BY t.window_end DESC LIMIT 1),
    outcome_window_end = (SELECT t.window_end FROM tasks t WHERE t.project = {m}.project AND t.model = {m}.model
               AND t.state IN ('done', 'failed') ORDER BY t.window_end DESC LIMIT 1),
    last_done_end = (SELECT t.window_end FROM tasks t WHERE t.project = {m}.project AND t.model = {m}.model
               AND t.state = 'done' ORDER BY t.window_end DESC LIMIT 1)
WHERE {which}"""
"""A model whose finished task was handed back (retry, cancel): its outcome read again from the ledger."""

PG_FUNCTIONS = (
    f"""CREATE FUNCTION latigo_model_summary_enqueued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO model_summary AS m (project, model, newest_window_end)
    SELECT project, model, max(window_end) FROM new_rows GROUP BY project, model ORDER BY project, model
    {MERGE.format(greatest='GREATEST', m='m')};
    RETURN NULL;
END $$""",
    f"""CREATE FUNCTION latigo_model_summary_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO model_summary AS m (project, model, newest_window_end, outcome, outcome_window_end,
                                    last_done_end, confidence, confidence_at)
    VALUES (NEW.project, NEW.model, NEW.window_end, NEW.state, NEW.window_end,
            CASE WHEN NEW.state = 'done' THEN NEW.window_end END,
            CASE WHEN NEW.state = 'done' THEN ({NEWEST_CONFIDENCE.format(column='value', row='NEW')}) END,
            CASE WHEN NEW.state = 'done' THEN ({NEWEST_CONFIDENCE.format(column='ts', row='NEW')}) END)
    {MERGE.format(greatest='GREATEST', m='m')};
    RETURN NULL;
END $$""",
    f"""CREATE FUNCTION latigo_model_summary_handed_back() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {RECOMPUTE.format(table='model_summary AS m', m='m', which='m.project = NEW.project AND m.model = NEW.model')};
    RETURN NULL;
END $$""",
)
"""Enqueue: per statement (one upsert for thousands of tasks, in (project, model) order). A task settled or
handed back: per row, behind a WHEN that PostgreSQL checks without calling the function, so the claims
and lease renewals of the hot path (updates that settle nothing) cost nothing."""

SETTLED = "NEW.state IN ('done', 'failed') AND (OLD.state IS DISTINCT FROM NEW.state OR NEW.state = 'done')"
HANDED_BACK = "OLD.state IN ('done', 'failed') AND NEW.state NOT IN ('done', 'failed')"

PG_TRIGGERS = (
    "CREATE TRIGGER model_summary_enqueued AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION latigo_model_summary_enqueued()",
    f"CREATE TRIGGER model_summary_settled AFTER UPDATE OF state ON tasks FOR EACH ROW WHEN ({SETTLED}) "
    "EXECUTE FUNCTION latigo_model_summary_settled()",
    f"CREATE TRIGGER model_summary_handed_back AFTER UPDATE OF state ON tasks FOR EACH ROW WHEN ({HANDED_BACK}) "
    "EXECUTE FUNCTION latigo_model_summary_handed_back()",
)

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER model_summary_enqueued AFTER INSERT ON tasks BEGIN
    INSERT INTO model_summary (project, model, newest_window_end) VALUES (NEW.project, NEW.model, NEW.window_end)
    {MERGE.format(greatest='max', m='model_summary')};
END""",
    f"""CREATE TRIGGER model_summary_settled AFTER UPDATE OF state ON tasks
WHEN NEW.state IN ('done', 'failed') AND (OLD.state IS NOT NEW.state OR NEW.state = 'done') BEGIN
    INSERT INTO model_summary (project, model, newest_window_end, outcome, outcome_window_end,
                               last_done_end, confidence, confidence_at)
    VALUES (NEW.project, NEW.model, NEW.window_end, NEW.state, NEW.window_end,
            CASE WHEN NEW.state = 'done' THEN NEW.window_end END,
            CASE WHEN NEW.state = 'done' THEN ({NEWEST_CONFIDENCE.format(column='value', row='NEW')}) END,
            CASE WHEN NEW.state = 'done' THEN ({NEWEST_CONFIDENCE.format(column='ts', row='NEW')}) END)
    {MERGE.format(greatest='max', m='model_summary')};
END""",
    f"""CREATE TRIGGER model_summary_handed_back AFTER UPDATE OF state ON tasks
WHEN OLD.state IN ('done', 'failed') AND NEW.state NOT IN ('done', 'failed') BEGIN
    {RECOMPUTE.format(table='model_summary', m='model_summary', which='model_summary.project = NEW.project AND model_summary.model = NEW.model')};
END""",
)

FILL = f"""
INSERT INTO model_summary (project, model, newest_window_end, outcome, outcome_window_end, last_done_end)
SELECT k.project, k.model, k.newest,
       (SELECT t.state FROM tasks t WHERE t.project = k.project AND t.model = k.model
        AND t.state IN ('done', 'failed') ORDER BY t.window_end DESC LIMIT 1),
       (SELECT t.window_end FROM tasks t WHERE t.project = k.project AND t.model = k.model
        AND t.state IN ('done', 'failed') ORDER BY t.window_end DESC LIMIT 1),
       (SELECT t.window_end FROM tasks t WHERE t.project = k.project AND t.model = k.model
        AND t.state = 'done' ORDER BY t.window_end DESC LIMIT 1)
FROM (SELECT project, model, max(window_end) AS newest FROM tasks GROUP BY project, model) AS k
"""

FILL_CONFIDENCE = f"""
UPDATE model_summary AS m SET
    confidence = (SELECT v.value FROM series s JOIN prediction_values v ON v.series_id = s.id
                  WHERE s.project = m.project AND s.model = m.model AND s.output = '{TOTAL}' AND s.tag = '{TOTAL}'
                  ORDER BY v.ts DESC LIMIT 1),
    confidence_at = (SELECT v.ts FROM series s JOIN prediction_values v ON v.series_id = s.id
                     WHERE s.project = m.project AND s.model = m.model AND s.output = '{TOTAL}' AND s.tag = '{TOTAL}'
                     ORDER BY v.ts DESC LIMIT 1)
"""


def upgrade() -> None:
    op.create_table(
        'model_summary',
        sa.Column('project', sa.String(length=255), nullable=False),
        sa.Column('model', sa.String(length=255), nullable=False),
        sa.Column('newest_window_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=True),
        sa.Column('outcome_window_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_done_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('confidence', sa.Double(), nullable=True),
        sa.Column('confidence_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('project', 'model', name=op.f('pk_model_summary')),
    )
    op.execute(FILL)
    op.execute(FILL_CONFIDENCE)
    if op.get_bind().dialect.name == 'postgresql':
        for statement in (*PG_FUNCTIONS, *PG_TRIGGERS):
            op.execute(statement)
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    for name in ('model_summary_enqueued', 'model_summary_settled', 'model_summary_handed_back'):
        op.execute(f'DROP TRIGGER IF EXISTS {name}' + (' ON tasks' if op.get_bind().dialect.name == 'postgresql'
                                                        else ''))
    if op.get_bind().dialect.name == 'postgresql':
        for name in ('enqueued', 'settled', 'handed_back'):
            op.execute(f'DROP FUNCTION IF EXISTS latigo_model_summary_{name}()')
    op.drop_table('model_summary')
