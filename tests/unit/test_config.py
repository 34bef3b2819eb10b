"""latigo.config: defaults < file < environment, typed validation, one-line errors, masking."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from latigo.config import COMPONENT_SECTIONS, describe_config, effective_tree, load_config, masked_tree, merge_sources
from latigo.errors import ConfigError
from latigo.factory import settings_class
from latigo.secrets import mask_text
from latigo.settings import DEFAULT_OUTPUTS, Config
from tests.support.config_components import THING

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "local_config.yaml.template"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./local_config.yaml and no LATIGO_* variables from the machine running the tests."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("LATIGO_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None) -> Config:
    path = write(tmp_path, text) if text is not None else None
    return load_config(path, env={**(env or {})})


def error(tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def secret() -> str:
    return "s3cr3t-" + uuid.uuid4().hex


# ---------------------------------------------------------------- precedence


def test_without_file_or_environment_every_value_is_the_default(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.database.url == "sqlite:///latigo.db"
    assert config.scheduler.interval == timedelta(minutes=30)
    assert config.scheduler.delay == timedelta(minutes=5)
    assert config.executor.concurrency == 8
    assert config.predictions.outputs == list(DEFAULT_OUTPUTS)
    assert config.logging.level == "INFO" and config.logging.format == "text"
    assert config.sources["scheduler.interval"] == "default"


def test_the_file_overrides_defaults_and_the_environment_overrides_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        scheduler:
          interval: 1h
          delay: 10m
        executor:
          concurrency: 2
        """,
        env={"LATIGO_SCHEDULER__INTERVAL": "2h", "LATIGO_EXECUTOR__MAX_ATTEMPTS": "9"},
    )
    assert config.scheduler.interval == timedelta(hours=2)
    assert config.scheduler.delay == timedelta(minutes=10)
    assert config.scheduler.catch_up_limit == timedelta(hours=24)
    assert config.executor.concurrency == 2
    assert config.executor.max_attempts == 9
    assert config.sources["scheduler.interval"] == "env LATIGO_SCHEDULER__INTERVAL"
    assert config.sources["scheduler.delay"] == f"file {tmp_path / 'config.yaml'}:3"
    assert config.sources["scheduler.catch_up_limit"] == "default"


def test_the_file_is_the_option_else_latigo_config_file_else_local_config_yaml(tmp_path: Path) -> None:
    option = write(tmp_path, "executor: {concurrency: 1}", "option.yaml")
    from_env = write(tmp_path, "executor: {concurrency: 2}", "env.yaml")
    env = {"LATIGO_CONFIG_FILE": str(from_env)}
    assert load_config(None, env={}).executor.concurrency == 8  # no file at all
    write(tmp_path, "executor: {concurrency: 3}", "local_config.yaml")
    assert load_config(None, env={}).executor.concurrency == 3
    assert load_config(None, env=env).executor.concurrency == 2
    assert load_config(option, env=env).executor.concurrency == 1


def test_environment_values_are_read_as_yaml_scalars_and_flow_collections(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"task_queue: {{type: '{THING}'}}",
        env={
            "LATIGO_TASK_QUEUE__NAME": "0123",
            "LATIGO_TASK_QUEUE__COUNT": "0x10",
            "LATIGO_TASK_QUEUE__RATIO": "0.25",
            "LATIGO_TASK_QUEUE__ENABLED": "true",
            "LATIGO_TASK_QUEUE__EVERY": "90",
            "LATIGO_TASK_QUEUE__TAGS": "[a, 'b, c', '12:30']",
            "LATIGO_TASK_QUEUE__EXTRA": "{k: 1, s: '2', on: [x]}",
            "LATIGO_TASK_QUEUE__NOTE": "",
            "LATIGO_TASK_QUEUE__LIMIT": "null",
            "LATIGO_PREDICTIONS__OUTPUTS": "model-output, tag-anomaly-scaled",
            "LATIGO_SCHEDULER__RUN_AT_ONCE": "yes",
        },
    )
    thing = config.task_queue.settings
    assert (thing.name, thing.count, thing.ratio, thing.enabled) == ("0123", 16, 0.25, True)
    assert thing.every == timedelta(seconds=90)  # a bare number is seconds, as in the file
    assert thing.tags == ["a", "b, c", "12:30"]
    assert thing.extra == {"k": 1, "s": "2", True: ["x"]}
    assert thing.note is None and thing.limit is None
    assert config.predictions.outputs == ["model-output", "tag-anomaly-scaled"]
    assert config.scheduler.run_at_once is True


def test_nested_keys_go_through_double_underscores_and_are_typed(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""
        task_queue:
          type: "{THING}"
          extra: {{kept: 1, deeper: {{a: 1}}}}
        """,
        env={"LATIGO_TASK_QUEUE__EXTRA__ADDED": "2", "LATIGO_TASK_QUEUE__EXTRA__DEEPER__B": "[x]"},
    )
    assert config.task_queue.settings.extra == {"kept": 1, "added": 2, "deeper": {"a": 1, "b": ["x"]}}
    assert config.sources["task_queue.extra.added"] == "env LATIGO_TASK_QUEUE__EXTRA__ADDED"


def test_seed_database_variable_sets_the_database_url(tmp_path: Path) -> None:
    password = secret()
    url = f"postgresql://latigo:{password}@db.example.com:5432/latigo"
    config = load(tmp_path, env={"LATIGO_INTERNAL_DATABASE": url})
    assert config.database.url == url
    assert config.sources["database.url"] == "env LATIGO_INTERNAL_DATABASE"
    assert password not in describe_config(config)
    assert mask_text(f"connect failed: {password}") == "connect failed: ***"


def test_seed_event_hub_variable_sets_the_queue_connection_string(tmp_path: Path) -> None:
    key = secret()
    connection = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={key};EntityPath=t"
    config = load(tmp_path, f"task_queue: {{type: '{THING}'}}", env={"LATIGO_INTERNAL_EVENT_HUB": connection})
    assert config.task_queue.settings.connection_string == connection
    assert config.sources["task_queue.connection_string"] == "env LATIGO_INTERNAL_EVENT_HUB"
    assert key not in describe_config(config)
    assert mask_text(f"echo of the key alone: {key}") == "echo of the key alone: ***"

    explicit = load(
        tmp_path,
        f"task_queue: {{type: '{THING}'}}",
        env={"LATIGO_INTERNAL_EVENT_HUB": connection, "LATIGO_TASK_QUEUE__CONNECTION_STRING": "Endpoint=sb://other/"},
    )
    assert explicit.task_queue.settings.connection_string == "Endpoint=sb://other/"


def test_the_seed_event_hub_variable_alone_means_the_event_hub_queue() -> None:
    env = {"LATIGO_INTERNAL_EVENT_HUB": "Endpoint=sb://ns/;SharedAccessKey=abcd"}
    tree, sources = merge_sources({}, {}, "file", env)
    assert tree["task_queue"] == {"type": "eventhub", "connection_string": env["LATIGO_INTERNAL_EVENT_HUB"]}
    assert sources["task_queue.type"].label == "env LATIGO_INTERNAL_EVENT_HUB"
    # ... but not when a queue type was chosen
    tree, _ = merge_sources({"task_queue": {"type": "database"}}, {}, "file", env)
    assert tree["task_queue"]["type"] == "database"
    if importlib.util.find_spec("latigo.queues.eventhub") is not None:
        try:
            assert load_config(None, env={**env}).task_queue.type == "eventhub"
        except ConfigError as exc:  # the queue's own checks may want more than the seed gave
            assert "unknown key" not in str(exc) and "abcd" not in str(exc)


def test_a_higher_layer_choosing_another_component_type_starts_that_section_afresh(tmp_path: Path) -> None:
    text = f"""
        task_queue:
          type: "{THING}"
          name: only-for-thing
        """
    assert load(tmp_path, text).task_queue.settings.name == "only-for-thing"
    config = load(tmp_path, text, env={"LATIGO_TASK_QUEUE__TYPE": "database"})
    assert config.task_queue.type == "database"
    assert config.sources["task_queue.type"] == "env LATIGO_TASK_QUEUE__TYPE"


def test_a_section_with_every_key_commented_out_changes_nothing(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        logging:
          # level: DEBUG
        task_queue:
          # type: eventhub
        scheduler: {}
        """,
    )
    assert config.logging.level == "INFO"
    assert config.task_queue.type == load(tmp_path).task_queue.type


def test_sensor_information_defaults_to_the_sensor_data_settings(tmp_path: Path) -> None:
    config = load(tmp_path, f"sensor_data: {{type: '{THING}', name: plant-a}}")
    assert config.sensor_information == config.sensor_data
    assert config.sensor_information.settings.name == "plant-a"
    assert config.sources["sensor_information.name"] == config.sources["sensor_data.name"]


# ---------------------------------------------------------------- values that stay text


@pytest.mark.parametrize("written", ["12:30", "'12:30'", "00:00", "2024-01-01T00:00:00Z", "2024-01-01"])
def test_start_time_stays_the_text_that_was_written(tmp_path: Path, written: str) -> None:
    config = load(tmp_path, f"scheduler: {{start_time: {written}}}")
    assert config.scheduler.start_time == written.strip("'")
    from_env = load(tmp_path, env={"LATIGO_SCHEDULER__START_TIME": written.strip("'")})
    assert from_env.scheduler.start_time == written.strip("'")


# ---------------------------------------------------------------- bad input: one line naming the key


def test_unknown_key_names_the_file_line_and_the_near_miss(tmp_path: Path) -> None:
    message = error(tmp_path, "scheduler:\n  interval: 1h\n  intervall: 3h\n")
    assert message == f"{tmp_path / 'config.yaml'}:3: scheduler.intervall: unknown key (did you mean 'interval'?)"


def test_unknown_key_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    message = error(tmp_path, env={"LATIGO_EXECUTOR__CONCURENCY": "3"})
    assert message == (
        "executor.concurency (env LATIGO_EXECUTOR__CONCURENCY): unknown key (did you mean 'concurrency'?)"
    )


def test_unknown_key_without_a_near_miss_has_no_suggestion(tmp_path: Path) -> None:
    assert error(tmp_path, "metrics: {colour: blue}").endswith("metrics.colour: unknown key")


def test_unknown_section_names_the_file_line_and_the_near_miss(tmp_path: Path) -> None:
    message = error(tmp_path, "executor: {concurrency: 2}\nschedular:\n  interval: 1h\n")
    assert message == f"{tmp_path / 'config.yaml'}:2: schedular: unknown section (did you mean 'scheduler'?)"
    message = error(tmp_path, env={"LATIGO_LOGGIN__LEVEL": "DEBUG"})
    assert message == "loggin (env LATIGO_LOGGIN__LEVEL): unknown section (did you mean 'logging'?)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("executor: {concurrency: many}", "executor.concurrency: expected an integer, got str 'many'"),
        ("executor: {concurrency: 2.5}", "executor.concurrency: expected an integer, got float 2.5"),
        ("scheduler: {run_at_once: maybe}", "scheduler.run_at_once: expected true or false, got str 'maybe'"),
        ("predictions: {outputs: model-output}", "predictions.outputs: expected a list, got str 'model-output'"),
        ("predictions: {outputs: [1]}", "predictions.outputs[0]: expected text, got int 1"),
        ("database: {url: 5}", "database.url: expected text, got int 5"),
        ("metrics: {port: }", "metrics.port: expected an integer, got nothing (null)"),
        ("logging: debug", "logging: expected a section (mapping), got str 'debug'"),
    ],
)
def test_wrong_type_names_the_key_the_expected_type_and_the_value(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text) == f"{tmp_path / 'config.yaml'}:1: {expected}"


def test_wrong_type_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    message = error(tmp_path, env={"LATIGO_EXECUTOR__CONCURRENCY": "eight"})
    assert message == "executor.concurrency (env LATIGO_EXECUTOR__CONCURRENCY): expected an integer, got 'eight'"
    message = error(tmp_path, env={"LATIGO_EXECUTOR__CONCURRENCY": "[1"})
    assert message.startswith("executor.concurrency (env LATIGO_EXECUTOR__CONCURRENCY): cannot read")


@pytest.mark.parametrize("written", ["3x", "30", "1h-5m", "soon"])
def test_bad_duration_names_the_key_and_the_accepted_forms(tmp_path: Path, written: str) -> None:
    path = tmp_path / "config.yaml"
    message = error(tmp_path, f"scheduler:\n  delay: '{written}'\n")
    assert message.startswith(f"{path}:2: scheduler.delay: bad duration {written!r}: use a number and a unit")
    assert "30m, 3h, 1d" in message
    message = error(tmp_path, env={"LATIGO_SCHEDULER__INTERVAL": "3x"})
    assert message.startswith("scheduler.interval (env LATIGO_SCHEDULER__INTERVAL): bad duration '3x'")


def test_negative_duration_is_refused(tmp_path: Path) -> None:
    message = error(tmp_path, "scheduler: {delay: -300}")
    assert message.endswith("scheduler.delay: a duration cannot be negative, got -5m")


def test_broken_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    message = error(tmp_path, "scheduler:\n  interval: 1h\n   delay: 5m\n")
    assert message == f"{path}:3: broken YAML: mapping values are not allowed here"
    message = error(tmp_path, "scheduler:\n  interval: [1h\n\nexecutor: {}\n")
    assert message.startswith(f"{path}:4: broken YAML: ")
    assert "flow sequence at line 2" in message
    assert error(tmp_path, "scheduler: !!python/object:os.system x\n").startswith(f"{path}:1: broken YAML: ")
    assert error(tmp_path, "- a\n- b\n") == f"{path}:1: the config file must be a mapping of sections"
    assert error(tmp_path, "scheduler:\n  delay: 1m\n  delay: 2m\n") == (
        f"{path}:3: scheduler.delay: duplicate key (given twice)"
    )


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read config file .*nope\.yaml: No such file or directory$"):
        load_config(tmp_path / "nope.yaml", env={})


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    assert error(tmp_path, "logging: {format: xml}").endswith("logging.format: must be one of text, json, got 'xml'")
    assert error(tmp_path, "logging: {format: jsn}").endswith(
        "logging.format: must be one of text, json, got 'jsn' (did you mean 'json'?)"
    )
    assert error(tmp_path, env={"LATIGO_LOGGING__LEVEL": "LOUD"}) == (
        "logging.level (env LATIGO_LOGGING__LEVEL): must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"
    )


def test_a_choice_is_accepted_in_any_case(tmp_path: Path) -> None:
    config = load(tmp_path, "logging: {level: debug, format: JSON}")
    assert (config.logging.level, config.logging.format) == ("DEBUG", "json")


def test_values_below_the_minimum_are_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "executor: {concurrency: 0}").endswith("executor.concurrency: must be at least 1, got 0")


def test_unknown_component_type_lists_the_known_ones(tmp_path: Path) -> None:
    message = error(tmp_path, "task_queue:\n  type: rabbitmq\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}:2: task_queue.type: unknown type 'rabbitmq'; known types: ")
    assert "database, eventhub" in message
    message = error(tmp_path, env={"LATIGO_SENSOR_DATA__TYPE": "csv"})
    assert message.startswith("sensor_data.type (env LATIGO_SENSOR_DATA__TYPE): unknown type 'csv'; known types: ")
    assert "influx" in message and "synthetic" in message


def test_a_component_key_of_another_type_is_an_unknown_key(tmp_path: Path) -> None:
    message = error(tmp_path, f"sensor_data:\n  type: '{THING}'\n  nmae: x\n")
    assert message.endswith(":3: sensor_data.nmae: unknown key (did you mean 'name'?)")


def test_a_component_section_without_type_says_it_is_required(tmp_path: Path) -> None:
    message = error(tmp_path, "sensor_information:\n  host: influx.example.com\n")
    assert message.endswith("sensor_information.type: is required: which implementation to use")


def test_a_wrong_type_for_a_secret_does_not_show_the_value(tmp_path: Path) -> None:
    message = error(tmp_path, f"task_queue: {{type: '{THING}', password: 987654321}}")
    assert "987654321" not in message
    assert message.endswith("task_queue.password: expected text, got a value of another kind (not shown: secret)")


# ---------------------------------------------------------------- printing with secrets masked


def test_printed_config_masks_every_secret_and_says_where_values_came_from(tmp_path: Path) -> None:
    db_password, client_secret, sink_password, key = secret(), secret(), secret(), secret()
    config = load(
        tmp_path,
        f"""
        database:
          url: postgresql://latigo:{db_password}@db.example.com/latigo
        task_queue:
          type: "{THING}"
          password: {client_secret}
          connection_string: Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey={key}
        predictions:
          sinks:
            - type: "{THING}"
              password: {sink_password}
        """,
        env={"LATIGO_EXECUTOR__CONCURRENCY": "3"},
    )
    text = describe_config(config)
    for hidden in (db_password, client_secret, sink_password, key):
        assert hidden not in text
    assert "url: postgresql://latigo:***@db.example.com/latigo  # file " in text
    assert "password: '***'  # file " in text
    assert "token_url: https://login.example.com/token  # default" in text  # where a token comes from: no secret
    assert "concurrency: 3  # env LATIGO_EXECUTOR__CONCURRENCY" in text
    assert "interval: 30m  # default" in text
    for hidden in (db_password, client_secret, sink_password, key):
        assert mask_text(f"error: {hidden}!") == "error: ***!"


def test_masked_tree_masks_by_key_name_inside_lists_and_mappings() -> None:
    tree = {"a": {"client_secret": "x1", "items": [{"password": "x2"}], "token": None, "url": "http://u:x3@h/"}}
    assert masked_tree(tree) == {"a": {"client_secret": "***", "items": [{"password": "***"}], "token": None,
                                       "url": "http://u:***@h/"}}


# ---------------------------------------------------------------- the template


def test_the_template_holds_exactly_the_built_in_defaults(tmp_path: Path) -> None:
    from_template = load_config(TEMPLATE, env={})
    defaults = load(tmp_path)
    assert effective_tree(from_template) == effective_tree(defaults)
    assert from_template.sources["scheduler.interval"].startswith(f"file {TEMPLATE}:")


def test_the_template_shows_every_section() -> None:
    text = TEMPLATE.read_text()
    for section in effective_tree(load_config(TEMPLATE, env={})):
        assert f"\n{section}:" in text or f"\n# {section}:" in text, section
    for production in ("type: eventhub", "type: influx", "type: data_api", "type: gordo"):
        assert f"# {production}" in text


def template_examples() -> list[tuple[str, str, list[str]]]:
    """(section, type, keys) of each component block of the template, active or commented out."""
    examples: list[tuple[str, str, list[str]]] = []
    section, current = "", None
    for line in TEMPLATE.read_text().splitlines():
        if match := re.match(r"^#? ?([a-z_]+):", line):
            section, current = match[1], None
        elif match := re.match(r"^  (?:# )?type: (\S+)", line):
            current = (section, match[1], [])
            examples.append(current)
        elif (match := re.match(r"^  # ([a-z_]+): ", line)) and current is not None:
            current[2].append(match[1])
        elif line.strip() == "#":
            current = None
    return [example for example in examples if example[0] in COMPONENT_SECTIONS]


def test_the_template_examples_use_keys_their_types_know() -> None:
    examples = template_examples()
    assert {(section, kind) for section, kind, _ in examples} >= {
        ("task_queue", "database"), ("task_queue", "eventhub"), ("sensor_data", "synthetic"),
        ("sensor_data", "influx"), ("sensor_data", "data_api"), ("model_information", "local"),
        ("model_information", "gordo"), ("model_execution", "gordo"),
    }
    checked = 0
    for section, kind, keys in examples:
        try:
            settings = settings_class(section, kind)
        except ConfigError as exc:
            assert "cannot be loaded" in str(exc)  # not implemented yet: nothing to compare with
            continue
        assert set(keys) <= {f.name for f in dataclasses.fields(settings)}, (section, kind)
        checked += 1
    assert checked >= 4
