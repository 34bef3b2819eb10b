"""Logging: text or one JSON object per line, task context on every line, secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from latigo.config import load_config
from latigo.logs import setup_logging, task_context
from latigo.secrets import register_secret
from tests.support.config_components import THING

log = logging.getLogger("latigo.test_logs")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where the latigo handler writes during the test; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def secret() -> str:
    return "s3cr3t-" + uuid.uuid4().hex


def test_json_lines_carry_time_level_logger_message_and_task_context(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    log.info("before")
    with task_context(task_id="t-1", model="pump-a", window="2024-01-01T00:00/00:30"):
        log.warning("inside %s", "the task", extra={"rows": 42})
        with task_context(attempt=2, model="pump-b", executor=None):
            log.error("nested")
    log.info("after")

    before, inside, nested, after = json_lines(stream)
    for entry in (before, inside, nested, after):
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert entry["logger"] == "latigo.test_logs"
        assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
    assert set(before) == {"time", "level", "logger", "message"}
    assert inside == {**inside, "level": "WARNING", "message": "inside the task", "task_id": "t-1",
                      "model": "pump-a", "window": "2024-01-01T00:00/00:30", "rows": 42}
    assert nested["task_id"] == "t-1" and nested["model"] == "pump-b" and nested["attempt"] == 2
    assert "executor" not in nested  # None fields are left out
    assert set(after) == {"time", "level", "logger", "message"}


def test_context_fields_do_not_replace_the_standard_fields(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    with task_context(message="not the message", level="not the level"):
        log.info("the message")
    (entry,) = json_lines(stream)
    assert entry["message"] == "the message" and entry["level"] == "INFO"


def test_json_exceptions_are_one_line_with_the_traceback_as_a_field(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    (entry,) = json_lines(stream)
    assert entry["message"] == "failed"
    assert "ValueError: boom\nsecond line" in entry["exception"]


def test_text_lines_end_with_the_task_context(stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    with task_context(task_id="t-9", model="m"):
        log.info("working")
    log.debug("not shown at INFO")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" INFO    latigo.test_logs: working [task_id=t-9 model=m]")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_registered_secret_is_masked_in_messages_arguments_context_extras_and_exceptions(
    stream: io.StringIO, fmt: str
) -> None:
    value = secret()
    register_secret(value)
    setup_logging("DEBUG", fmt, stream)
    log.info(f"in the message {value}")
    log.info("in an argument %s", value)
    with task_context(task_id=f"x{value}y"):
        log.info("in the context", extra={"detail": {"url": f"https://u:{value}@h/"}})
    try:
        raise ConnectionError(f"cannot connect with {value}")
    except ConnectionError:
        log.exception("in an exception")
    try:
        raise RuntimeError("outer") from ValueError(value)
    except RuntimeError:
        log.error("in a cause", exc_info=True)
    output = stream.getvalue()
    assert value not in output
    assert output.count("***") >= (6 if fmt == "json" else 5)  # text lines leave extras out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_shared_access_key_is_masked_without_being_registered(stream: io.StringIO, fmt: str) -> None:
    key = uuid.uuid4().hex
    connection = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={key};EntityPath=t"
    setup_logging("INFO", fmt, stream)
    log.info("connecting to %s", connection)
    try:
        raise OSError(f"AMQP error for {connection}")
    except OSError:
        log.exception("failed")
    output = stream.getvalue()
    assert key not in output
    assert "SharedAccessKey=***;EntityPath=t" in output


def test_secrets_from_the_config_are_masked_in_logs(stream: io.StringIO) -> None:
    password, key = secret(), secret()
    config = load_config(None, env={
                "LATIGO_DATABASE__URL": f"postgresql://latigo:{password}@db/latigo",
        "LATIGO_LOGGING__FORMAT": "json",
    })
    register_secret(f"Endpoint=sb://ns/;SharedAccessKey={key}")
    setup_logging(config.logging.level, config.logging.format, stream)
    log.warning("database %s said: password %s rejected; key %s", config.database.url, password, key)
    (entry,) = json_lines(stream)
    assert password not in entry["message"] and key not in entry["message"]
    assert entry["message"] == "database postgresql://latigo:***@db/latigo said: password *** rejected; key ***"


def test_logging_the_whole_config_object_shows_no_secret(stream: io.StringIO, tmp_path) -> None:
    password, connection_key, token = secret(), secret(), secret()
    path = tmp_path / "c.yaml"
    path.write_text(
        f"database: {{url: 'postgresql://u:{password}@db/x'}}\n"
        f"task_queue: {{type: '{THING}', connection_string: 'Endpoint=sb://n/;SharedAccessKey={connection_key}',"
        f" password: '{token}'}}\n"
    )
    config = load_config(path, env={})
    setup_logging("INFO", "text", stream)
    log.info("starting with %r", config)
    output = stream.getvalue()
    assert "starting with Config(" in output
    for hidden in (password, connection_key, token):
        assert hidden not in output


def test_a_bad_format_call_does_not_raise_into_the_caller(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    raise_exceptions = logging.raiseExceptions
    logging.raiseExceptions = False  # the handler's usual "--- Logging error ---" report, silenced
    try:
        log.info("%s and %s", "only one")
    finally:
        logging.raiseExceptions = raise_exceptions
    log.info("still logging")
    assert json_lines(stream)[-1]["message"] == "still logging"


def test_setting_up_twice_keeps_one_handler(stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    setup_logging("WARNING", "json", stream)
    assert [h.get_name() for h in logging.getLogger().handlers].count("latigo") == 1
    log.info("dropped")
    log.warning("kept")
    assert [entry["message"] for entry in json_lines(stream)] == ["kept"]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("Endpoint=sb://ns/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc+/=;EntityPath=h",
         "Endpoint=sb://ns/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=***;EntityPath=h"),
        ("DefaultEndpointsProtocol=https;AccountName=acc;AccountKey=k3y==;EndpointSuffix=core",
         "DefaultEndpointsProtocol=https;AccountName=acc;AccountKey=***;EndpointSuffix=core"),
        ("GET https://acc.blob.core/c?sv=2020&sig=AbC%2Fd&se=1 failed",
         "GET https://acc.blob.core/c?sv=2020&sig=***&se=1 failed"),
        ("headers: Authorization: Bearer eyJhbGciOi.payload.signature", "headers: Authorization: Bearer ***"),
        ("Server=db;User Id=u;Password=hunter22;", "Server=db;User Id=u;Password=***;"),
        ("nothing secret here: token_url=https://login/token", "nothing secret here: token_url=https://login/token"),
    ],
)
def test_secrets_in_free_text_are_masked_by_their_shape(text: str, masked: str, stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    log.info(text)
    assert stream.getvalue().rstrip("\n").endswith(masked)
