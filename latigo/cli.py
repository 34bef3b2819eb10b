"""The `latigo` command: services, database management, and looking at what is going on."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from latigo import __version__
from latigo.config import Config, describe_config, load_config
from latigo.errors import ConfigError, LatigoError, SchemaOutdatedError
from latigo.logs import setup_logging
from latigo.secrets import mask_text

log = logging.getLogger("latigo")

EXIT_USAGE = 2
EXIT_SCHEMA = 3

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
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: $LATIGO_CONFIG_FILE or ./local_config.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("check-config", help="validate and print the effective config (secrets masked)")

    db = sub.add_parser("db", help="database schema (alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="migrate the schema down to REV ('base' removes everything)")
    down.add_argument("revision")
    db_sub.add_parser("current", help="print the schema revision of the database")
    return parser


@command("check-config")
def check_config(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(describe_config(config))
    return 0


@command("db")
def db(args: argparse.Namespace, config: Config) -> int:
    from latigo.storage import migrations
    from latigo.storage.db import create_engine_for

    engine = create_engine_for(config.database)
    try:
        if args.db_command == "upgrade":
            migrations.upgrade(engine, args.revision)
            print(f"database schema at {migrations.current_revision(engine)}")
        elif args.db_command == "downgrade":
            migrations.downgrade(engine, args.revision)
            print(f"database schema at {migrations.current_revision(engine) or 'base (empty)'}")
        else:
            current = migrations.current_revision(engine)
            head = migrations.head_revision()
            state = "up to date" if current == head else f"behind: run `latigo db upgrade` to reach {head}"
            print(f"{current or 'base (empty)'} ({state})")
    finally:
        engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return 1
    except KeyboardInterrupt:
        return 130

