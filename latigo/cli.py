"""The `latigo` command: services, database management, and looking at what is going on."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from latigo import __version__
from latigo.config import describe_config, load_config
from latigo.errors import ConfigError, LatigoError, SchemaOutdatedError
from latigo.logs import setup_logging
from latigo.secrets import mask_text
from latigo.settings import Config

log = logging.getLogger("latigo")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3
EXIT_DATABASE = 4

Handler = Callable[[argparse.Namespace, Config], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latigo",
        description="Continuous predictions from Gordo models over live sensor data.",
    )
    parser.add_argument("--version", action="version", version=f"latigo {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config (default: $LATIGO_CONFIG_FILE or ./local_config.yaml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate and print the effective config (secrets masked), and "
                           "build every configured part")
    check.add_argument("--connect", action="store_true",
                       help="also connect: the database, the task queue, the model provider, the sensor source")

    db = sub.add_parser("db", help="database schema (alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument("--project", metavar="NAME", help="the project the rows already in the database belong to, "
                    "when they predate projects (default: the one project the config names)")
    down = db_sub.add_parser("downgrade", help="migrate the schema down to REV ('base' removes everything)")
    down.add_argument("revision")
    db_sub.add_parser("current", help="print the schema revision of the database")
    db_sub.add_parser("prune", help="delete finished tasks, dead letters and stale schedule state past `retention`")

    scheduler = sub.add_parser("scheduler", help="run the scheduler: enqueue a task per model and due window")
    scheduler.add_argument("--once", action="store_true", help="run one scheduling cycle and exit")

    executor = sub.add_parser("executor", help="run an executor: take tasks, run models, store predictions")
    executor.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                          help="exit 0 once nothing arrived and nothing ran for SECONDS")

    backfill = sub.add_parser("backfill", help="enqueue every window of a past range")
    backfill.add_argument("--from", dest="start", required=True, type=_timestamp, metavar="TIME",
                          help="ISO 8601 start (with zone, or Z)")
    backfill.add_argument("--to", dest="end", required=True, type=_timestamp, metavar="TIME",
                          help="ISO 8601 end (exclusive)")
    backfill.add_argument("--model", dest="models", action="append", metavar="NAME",
                          help="only this model, NAME or PROJECT/NAME (repeatable; default: every model)")
    backfill.add_argument("--project", dest="projects", action="append", metavar="PROJECT",
                          help="only models of this project (repeatable; default: every project)")
    backfill.add_argument("--rerun", action="store_true",
                          help="compute windows that are already done (or failed) again")
    backfill.add_argument("--dry-run", action="store_true", help="print how many tasks and which windows; enqueue "
                          "nothing")
    backfill.add_argument("--yes", action="store_true",
                          help="go ahead with more tasks than scheduler.backfill_confirm_above")
    backfill.add_argument("--no-progress", action="store_true", help="no progress bar")

    tasks = sub.add_parser("tasks", help="list, retry or cancel tasks")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", metavar="ACTION")
    tasks_sub.required = True
    for action, text in (("list", "tasks, newest window first"),
                         ("retry", "failed tasks (or --state) back to the queue with fresh counters"),
                         ("cancel", "queued tasks are not run (an executor that receives one skips it)")):
        one = tasks_sub.add_parser(action, help=text)
        one.add_argument("--state", dest="states", action="append", metavar="STATE",
                         choices=("queued", "running", "done", "failed", "cancelled"),
                         help="only tasks in this state (repeatable)")
        one.add_argument("--failed", dest="states", action="append_const", const="failed", help="as --state failed")
        one.add_argument("--model", dest="models", action="append", metavar="NAME", help="only this model")
        one.add_argument("--project", dest="projects", action="append", metavar="PROJECT",
                         help="only models of this project")
        one.add_argument("--from", dest="start", type=_timestamp, metavar="TIME", help="windows starting at or after")
        one.add_argument("--to", dest="end", type=_timestamp, metavar="TIME", help="windows ending at or before")
        if action == "list":
            one.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
            one.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="run everything locally: synthetic sensors, local models, two executors")
    demo.add_argument("--dir", type=Path, default=Path("latigo-demo"), help="where to put it (default ./latigo-demo)")
    demo.add_argument("--models", type=int, default=5, help="how many models to train (default 5)")
    demo.add_argument("--hours", type=float, default=12, help="how many past hours to predict (default 12)")
    demo.add_argument("--follow", action="store_true", help="then keep predicting live windows until Ctrl-C")
    demo.add_argument("--model", dest="chart_model", metavar="NAME", help="the model the chart shows (default: the "
                      "first, demo-model-0)")

    anomalies = sub.add_parser("anomalies", help="anomaly episodes: runs of total-anomaly-confidence above 1")
    anomalies.add_argument("--since", type=_duration, default="24h", metavar="DURATION",
                           help="episodes with buckets in the last DURATION (default 24h)")
    anomalies.add_argument("--model", dest="models", action="append", metavar="NAME", help="only this model")
    anomalies.add_argument("--project", dest="projects", action="append", metavar="PROJECT",
                           help="only models of this project")
    anomalies.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser("status", help="tasks per state, backlog, failures, the late or failing models "
                                           "(a screenful; --json has every model)")
    status.add_argument("--json", action="store_true", help="machine-readable output: every per-model value")
    status.add_argument("--project", dest="projects", action="append", metavar="PROJECT",
                        help="only models of this project (every model of it listed)")
    status.add_argument("--model", dest="models", action="append", metavar="NAME",
                        help="only this model, NAME or PROJECT/NAME (its line shown whatever its state)")

    web = sub.add_parser("web", help="a read-only status page: pipeline health, models, anomaly scores")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                     "--token-file)")
    web.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: a free one)")
    web.add_argument("--token-file", type=Path, metavar="FILE",
                     help="a file holding the token every request must carry (?token= or Authorization: Bearer)")

    models = sub.add_parser("models", help="list, check, register or unregister models")
    models.add_argument("--check", action="store_true", help="as `latigo models check`")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    listing = models_sub.add_parser("list", help="the models the configured provider lists (the default)")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    listing.add_argument("--project", dest="projects", action="append", metavar="PROJECT",
                         help="only models of this project")
    models_sub.add_parser("check", help="Gordo: listed models without metadata, expected models not built")
    register = models_sub.add_parser("register", help="register (or replace) a model from a machine description "
                                     "(YAML or JSON, Gordo's machine format)")
    register.add_argument("file", type=Path)
    unregister = models_sub.add_parser("unregister", help="remove a model (NAME, or PROJECT/NAME where the "
                                       "provider serves several projects)")
    unregister.add_argument("name")
    model_status = models_sub.add_parser("status", help="a model's state, and why when it is not ready (NAME, or "
                                         "PROJECT/NAME)")
    model_status.add_argument("name")
    model_status.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sensors = sub.add_parser("sensors", help="list the sensors the configured provider sees")
    sensors.add_argument("--json", action="store_true", help="machine-readable output")
    _config_after_command(sub)
    return parser


def _config_after_command(sub: argparse._SubParsersAction) -> None:
    """`latigo status --config FILE` works as `latigo --config FILE status`, on every (sub)command."""
    for command in sub.choices.values():
        command.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="as `latigo --config FILE`")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _config_after_command(action)


@command("check-config")
def check_config(args: argparse.Namespace, config: Config) -> int:
    from latigo.config_check import build_all, probe_all
    from latigo.factory import Components

    sys.stdout.write(describe_config(config))
    components = Components(config)
    checks = build_all(components)
    if args.connect and all(check.ok for check in checks):
        checks += probe_all(components)
    print("# parts" + (" and their peers" if args.connect else " (built; --connect also connects)"))
    for check in checks:
        print("#" + check.line())
    return 0 if all(check.ok for check in checks) else EXIT_USAGE


@command("db")
def db(args: argparse.Namespace, config: Config) -> int:
    from latigo.storage import migrations
    from latigo.storage.db import create_engine_for

    engine = create_engine_for(config.database)
    try:
        if args.db_command == "upgrade":
            migrations.upgrade(engine, args.revision, project=args.project or config.sole_project())
            print(f"database schema at {migrations.current_revision(engine)}")
            if migrations.current_revision(engine) == migrations.head_revision():
                _partitions_ahead(engine, config)
        elif args.db_command == "downgrade":
            migrations.downgrade(engine, args.revision)
            print(f"database schema at {migrations.current_revision(engine) or 'base (empty)'}")
        elif args.db_command == "prune":
            from latigo.factory import Components
            from latigo.operations import prune

            migrations.ensure_schema_current(engine)
            deleted = prune(Components(config))
            print("pruned " + ", ".join(f"{count} {table}" for table, count in deleted.items()))
        else:
            current = migrations.current_revision(engine)
            head = migrations.head_revision()
            state = "up to date" if current == head else f"behind: run `latigo db upgrade` to reach {head}"
            print(f"{current or 'base (empty)'} ({state})")
    finally:
        engine.dispose()
    return 0


def _duration(text: str):
    from latigo.durations import parse_duration

    return _argument(parse_duration, text)


def _argument(parse: Callable[[str], object], text: str):
    """An argparse type: `parse`'s ValueError becomes argparse's own one-line error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@command("anomalies")
def anomalies(args: argparse.Namespace, config: Config) -> int:
    import json
    from datetime import datetime, timezone

    from latigo.anomalies import find_episodes
    from latigo.storage.db import create_engine_for
    from latigo.storage.schema import ensure_schema_current
    from latigo.types import ModelRef

    engine = create_engine_for(config.database)
    ensure_schema_current(engine)
    since = datetime.now(timezone.utc) - args.since  # argparse applied _duration to the default too
    with engine.connect() as connection:
        episodes = find_episodes(connection, since, args.models or (), args.projects or ())
    engine.dispose()
    if args.json:
        print(json.dumps([episode.as_dict() for episode in episodes], indent=2))
        return 0
    if not episodes:
        print(f"no anomaly episodes since {since.isoformat(timespec='minutes')}")
    for e in episodes:
        end = e.end.isoformat(timespec="minutes") if e.end else "ongoing"
        tags = ", ".join(f"{tag} {value:.2f}" for tag, value in e.top_tags)
        print(f"{ModelRef(e.project, e.model).label}  {e.start.isoformat(timespec='minutes')} .. {end}  "
              f"peak {e.peak:.2f} at "
              f"{e.peak_at.isoformat(timespec='minutes')}  ({e.buckets} buckets)  top tags: {tags or '-'}")
    return 0


def _partitions_ahead(engine, config: Config) -> None:
    from datetime import datetime, timezone

    from latigo.storage.prediction_store import PredictionStore

    store = PredictionStore(engine, config.predictions.partition_size)
    created = store.ensure_ahead(datetime.now(timezone.utc), behind=config.scheduler.catch_up_limit,
                                 ahead=config.predictions.partitions_ahead)
    if created:
        print(f"created {created} prediction partitions")


def _timestamp(text: str):
    from latigo.types import parse_timestamp

    return _argument(parse_timestamp, text)


@command("scheduler")
def scheduler(args: argparse.Namespace, config: Config) -> int:
    from latigo.services import run_scheduler

    return run_scheduler(config, once=args.once)


@command("executor")
def executor(args: argparse.Namespace, config: Config) -> int:
    from latigo.services import run_executor

    return run_executor(config, exit_when_idle=args.exit_when_idle)


@command("backfill")
def backfill(args: argparse.Namespace, config: Config) -> int:
    from latigo.services import run_backfill

    if args.end <= args.start:
        raise ConfigError(f"backfill: --to {args.end.isoformat()} is not after --from {args.start.isoformat()}")
    return run_backfill(config, args.start, args.end, args.models, progress=not args.no_progress, rerun=args.rerun,
                        dry_run=args.dry_run, confirmed=args.yes, projects=args.projects)


@command("tasks")
def tasks(args: argparse.Namespace, config: Config) -> int:
    import json

    from latigo.factory import Components
    from latigo.lifecycle import TaskFilter
    from latigo.operations import cancel_tasks, list_tasks, retry_tasks
    from latigo.storage.schema import ensure_schema_current
    from latigo.types import ModelRef, TimeRange

    if args.start and args.end and args.end <= args.start:
        raise ConfigError(f"tasks: --to {args.end.isoformat()} is not after --from {args.start.isoformat()}")
    window = None
    if args.start or args.end:
        far = _timestamp("9999-01-01T00:00:00Z")
        window = TimeRange(args.start or _timestamp("1970-01-01T00:00:00Z"), args.end or far)
    default_states = {"retry": ("failed",), "cancel": ("queued",), "list": ()}[args.tasks_command]
    which = TaskFilter(states=tuple(args.states or default_states), models=tuple(args.models or ()), window=window,
                       projects=tuple(args.projects or ()))
    components = Components(config)
    ensure_schema_current(components.engine)
    if args.tasks_command == "retry":
        print(f"{retry_tasks(components, which)} tasks back on the queue")
    elif args.tasks_command == "cancel":
        print(f"{cancel_tasks(components, which)} queued tasks cancelled")
    else:
        rows = list_tasks(components, which, args.limit)
        if args.json:
            print(json.dumps([row.as_dict() for row in rows], indent=2))
        for row in [] if args.json else rows:
            detail = f"  {row.error}" if row.error else ""
            revision = f", revision {row.revision}" if row.revision else ""
            print(f"{row.window_start}  {ModelRef(row.project, row.model).label}  {row.state}  runs {row.runs}, "
                  "failed attempts "
                  f"{row.attempts}, lost {row.lost}{revision}{detail}")
    components.task_queue.close()
    return 0


@command("demo")
def demo(args: argparse.Namespace, config: Config) -> int:
    from latigo.demo import run_demo

    if args.models < 1 or args.hours < 1:
        raise ConfigError("demo: --models and --hours must be at least 1")
    run_demo(args.dir, args.models, args.hours, follow=args.follow, chart_model=args.chart_model)
    return 0


@command("status")
def status(args: argparse.Namespace, config: Config) -> int:
    from latigo.status import collect_queue_lag, collect_status
    from latigo.storage.db import create_engine_for
    from latigo.storage.schema import ensure_schema_current

    engine = create_engine_for(config.database)
    ensure_schema_current(engine)
    schedule = config.scheduler
    report = collect_status(engine, projects=tuple(args.projects or ()), models=tuple(args.models or ()),
                            late_after=2 * schedule.interval + schedule.delay)
    report.queue_lag, report.queue_lag_error = collect_queue_lag(config)
    if args.models and not report.models:
        engine.dispose()
        print(f"latigo status: no model {', '.join(args.models)} in the ledger", file=sys.stderr)
        return 1
    sys.stdout.write(report.to_json() + "\n" if args.json else
                     report.to_text(every_model=bool(args.models or args.projects)))
    engine.dispose()
    return 0


@command("web")
def web(args: argparse.Namespace, config: Config) -> int:
    from latigo.web.server import run_web

    return run_web(config, args.host, args.port, args.token_file)


@command("models")
def models(args: argparse.Namespace, config: Config) -> int:
    import json

    from latigo.factory import Components
    from latigo.model_commands import (
        check_report,
        format_model_list,
        model_list,
        model_status,
        read_machine,
        register,
        unregister,
    )

    components = Components(config)
    action = "check" if args.check else (args.models_command or "list")
    if action == "check":
        sys.stdout.write(check_report(components))
    elif action == "register":
        name = register(components, read_machine(args.file))
        print(f"model {name} registered")
    elif action == "unregister":
        unregister(components, args.name)
        print(f"model {args.name} unregistered")
    elif action == "status":
        status = model_status(components, args.name)
        print(json.dumps(status, indent=2) if args.json else
              f"{status['name']}: {status['state']}" + (f" ({status['reason']})" if status["reason"] else ""))
    else:
        listed = model_list(components, getattr(args, "projects", None))
        if args.json:
            print(json.dumps([{"project": project, "name": name} for project, names in listed.items()
                              for name in names], indent=2))
        else:
            sys.stdout.write(format_model_list(listed))
    return 0


@command("sensors")
def sensors(args: argparse.Namespace, config: Config) -> int:
    from latigo.factory import Components

    names = Components(config).sensor_information.get_sensor_list()
    if args.json:
        import json

        print(json.dumps(names))
    else:
        for name in names:
            print(name)
    return 0


def _first_line(exc: BaseException) -> str:
    """The driver's own first line ("connection refused", "unable to open database file"), masked."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return mask_text(lines[0] if lines else type(cause).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    config: Config | None = None
    try:
        config = load_config(args.config)
        setup_logging(config.logging.level, config.logging.format)
        return COMMANDS[args.command](args, config)
    except ConfigError as exc:
        print(f"latigo: config error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SchemaOutdatedError as exc:
        print(f"latigo: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except LatigoError as exc:
        print(f"latigo: error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from latigo.storage.faults import is_infrastructure_fault

        if not is_infrastructure_fault(exc) or config is None:
            raise
        from latigo.storage.db import database_location

        print(f"latigo: cannot reach the database ({database_location(config.database.url)}): "
              f"{_first_line(exc)}", file=sys.stderr)
        return EXIT_DATABASE

