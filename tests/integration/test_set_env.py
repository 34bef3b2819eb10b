"""set_env.py: creates local_config.yaml from the template, then prints exports that `eval` in bash
turns into exactly the values of the file, which latigo reads back as the same typed settings."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latigo import config as latigo_config
from latigo.config import effective_tree, load_config
from tests.support.config_components import THING

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "set_env.py"
TEMPLATE = REPO / "local_config.yaml.template"
BASH = shutil.which("bash")

HOSTILE = {
    "plain": "plain",
    "spaces": "two  spaces and   three",
    "edges": "  leading and trailing  ",
    "single_quote": "it's",
    "double_quote": 'say "hi"',
    "dollar": "$HOME ${PATH} $(id) $'x' $",
    "backticks": "`whoami`",
    "backslashes": "back\\slash \\\\ \\n \\x41 \\",
    "newlines": "line1\nline2\n\nline4",
    "trailing_newline": "ends with a newline\n",
    "tab": "a\tb",
    "carriage_return": "a\r\nb",
    "globs": "* ? [ab] [] *.py",
    "unicode": "ünïcödé ✓ 😀 \u00a0nbsp",
    "shell_syntax": "a;b && c || d | e > f < g & (h) {i} !j #k ~l",
    "empty": "",
    "tilde": "~",
    "dash_n": "-n",
    "percent": "%s %d",
    "equals": "a=b==c",
}


def run_set_env(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, env=_clean_env(), check=False
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}


def eval_in_bash(file: Path, cwd: Path, quoted: bool) -> dict[str, str]:
    """The LATIGO_* environment a real bash has after `eval $(set_env.py --file FILE)`."""
    substitution = f"$({sys.executable} {SCRIPT} --file {file})"
    script = f'eval "{substitution}"' if quoted else f"eval {substitution}"
    dump = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    result = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", f"set -e; shopt -s failglob; {script}; {dump}"],
        cwd=cwd, capture_output=True, text=True, env=_clean_env(), check=True,
    )
    return {k: v for k, v in json.loads(result.stdout).items() if k.startswith("LATIGO_")}


def yaml_text(data: object) -> str:
    """YAML that latigo's reader reads back as `data` (it quotes "0o17", which YAML 1.1 writers leave plain)."""
    return yaml.dump(data, Dumper=latigo_config._ConfigDumper, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------- first run


def test_first_run_creates_the_file_from_the_template_and_says_so_on_stderr(tmp_path: Path) -> None:
    result = run_set_env(cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == ""
    assert "created local_config.yaml" in result.stderr and "local_config.yaml.template" in result.stderr
    assert (tmp_path / "local_config.yaml").read_text() == TEMPLATE.read_text()
    second = run_set_env(cwd=tmp_path)
    assert second.returncode == 0 and second.stderr == ""
    assert "export LATIGO_TASK_QUEUE__TYPE=database;" in second.stdout.splitlines()


def test_file_and_template_options(tmp_path: Path) -> None:
    template = tmp_path / "my.template"
    template.write_text("logging: {level: DEBUG}\n")
    result = run_set_env("--file", "conf/mine.yaml", "--template", str(template), cwd=tmp_path)
    assert result.returncode == 2  # the folder does not exist
    assert result.stderr == "set_env.py: cannot create conf/mine.yaml: No such file or directory\n"
    (tmp_path / "conf").mkdir()
    result = run_set_env("--file", "conf/mine.yaml", "--template", str(template), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == ""
    assert (tmp_path / "conf" / "mine.yaml").read_text() == "logging: {level: DEBUG}\n"
    result = run_set_env("--file", "conf/mine.yaml", cwd=tmp_path)
    assert result.stdout == "export LATIGO_LOGGING__LEVEL=DEBUG;\n"


def test_a_missing_template_is_one_line_on_stderr_with_status_2(tmp_path: Path) -> None:
    result = run_set_env("--template", str(tmp_path / "absent.template"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "absent.template" in result.stderr


def test_the_script_is_executable_and_runs_by_its_path(tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    (tmp_path / "local_config.yaml").write_text("metrics: {port: 9200}\n")
    result = subprocess.run([str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), check=True)
    assert result.stdout == "export LATIGO_METRICS__PORT=9200;\n"


def test_the_script_uses_only_the_standard_library_and_pyyaml() -> None:
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"yaml"}


# ---------------------------------------------------------------- the export lines


def test_one_export_line_per_value_with_nested_keys_joined_by_double_underscores(tmp_path: Path) -> None:
    (tmp_path / "local_config.yaml").write_text(
        "task_queue: {connection_string: x}\n"
        "scheduler:\n  interval: 1h\n  start_time: 12:30\n"
        "logging:\n  # level: DEBUG\n"
        "predictions: {outputs: [a, b], sinks: []}\n"
    )
    result = run_set_env(cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "export LATIGO_TASK_QUEUE__CONNECTION_STRING=x;",
        "export LATIGO_SCHEDULER__INTERVAL=1h;",
        "export LATIGO_SCHEDULER__START_TIME=12:30;",
        "export LATIGO_PREDICTIONS__OUTPUTS=$'\\x5ba, b]';",
        "export LATIGO_PREDICTIONS__SINKS=$'\\x5b]';",
    ]


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("quoted", [True, False], ids=["eval-quoted", "eval-unquoted"])
def test_eval_in_bash_reproduces_every_value_exactly(tmp_path: Path, quoted: bool) -> None:
    file = tmp_path / "hostile.yaml"
    file.write_text(yaml_text({"hostile": HOSTILE}))
    (tmp_path / "LATIGO_HOSTILE__GLOBS=* ? ab [] *.py;").touch()  # something for a stray glob to match
    exported = eval_in_bash(file, tmp_path, quoted)
    assert exported == {f"LATIGO_HOSTILE__{key.upper()}": value for key, value in HOSTILE.items()}


def hostile_config() -> dict:
    """A valid config whose text, list and mapping values are hostile to shells."""
    return {
        "task_queue": {
            "type": THING,
            "name": HOSTILE["dollar"] + HOSTILE["newlines"],
            "count": 7,
            "ratio": 1.5e-3,
            "enabled": True,
            "every": "1h30m",
            "tags": [HOSTILE["spaces"], HOSTILE["globs"], HOSTILE["single_quote"], "12:30", "0o17", "yes", ""],
            "extra": {"quotes": HOSTILE["double_quote"], "n": 3, "list": [1, "2", None], "nested": {"s": "a  b"}},
            "note": HOSTILE["backslashes"] + HOSTILE["backticks"],
            "limit": None,
            "connection_string": "Endpoint=sb://ns/;SharedAccessKeyName=n;SharedAccessKey=k3y+/=;EntityPath=hub",
            "password": HOSTILE["shell_syntax"] + HOSTILE["unicode"],
        },
        "scheduler": {"start_time": "12:30", "interval": "1h", "delay": 90, "run_at_once": True},
        "executor": {"concurrency": 3},
        "predictions": {"outputs": ["model-output", "tag-anomaly-scaled"]},
        "logging": {"level": "DEBUG", "format": "json"},
        "metrics": {"enabled": False, "host": "127.0.0.1", "port": 0},
    }


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("quoted", [True, False], ids=["eval-quoted", "eval-unquoted"])
def test_latigo_reads_the_exported_environment_as_the_same_typed_settings(tmp_path: Path, quoted: bool) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text(yaml_text(hostile_config()) + "sensor_data:\n  type: '" + THING + "'\n  ratio: .inf\n")
    from_file = load_config(file, env={})
    exported = eval_in_bash(file, tmp_path, quoted)
    from_env = load_config(None, env=dict(exported))
    assert effective_tree(from_env) == effective_tree(from_file)
    assert from_env.task_queue.settings.tags[3:6] == ["12:30", "0o17", "yes"]
    assert from_env.scheduler.start_time == "12:30"
    assert all(source.startswith("env ") for key, source in from_env.sources.items() if key.startswith("executor.c"))


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_the_template_exported_gives_the_defaults(tmp_path: Path) -> None:
    exported = eval_in_bash(TEMPLATE, tmp_path, quoted=False)
    assert exported["LATIGO_SCHEDULER__START_TIME"] == "00:00"
    from_env = load_config(None, env=dict(exported))
    assert effective_tree(from_env) == effective_tree(load_config(None, env={}))


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_anchors_aliases_and_merge_keys_are_exported_as_loading_the_file_resolves_them(tmp_path: Path) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text(
        f"""
task_queue: &thing
  type: "{THING}"
  name: shared
  tags: &tags [a, b]
model_information: *thing
sensor_data:
  <<: *thing
  count: 9
  extra: {{same: *tags}}
"""
    )
    exported = eval_in_bash(file, tmp_path, quoted=False)
    assert exported["LATIGO_MODEL_INFORMATION__NAME"] == "shared"
    assert exported["LATIGO_SENSOR_DATA__NAME"] == "shared"
    assert exported["LATIGO_SENSOR_DATA__COUNT"] == "9"
    from_env = load_config(None, env=dict(exported))
    assert effective_tree(from_env) == effective_tree(load_config(file, env={}))


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scheduler:\n  interval: 1h\n   delay: 5m\n", "mine.yaml:3: broken YAML: mapping values are not allowed here"),
        ("scheduler: [1h\n", "mine.yaml:2: broken YAML: "),
        ("- a\n- b\n", "mine.yaml:1: the config file must be a mapping of sections"),
        ("logging: DEBUG\n", "mine.yaml:1: section 'logging' must be a mapping of keys"),
        ("logging:\n  log-level: DEBUG\n", "mine.yaml:2: key 'log-level' cannot be part of an environment variable"),
        ("task_queue:\n  a__b: 1\n", "mine.yaml:2: key 'a__b' cannot be part of an environment variable"),
    ],
)
def test_a_bad_file_is_one_line_with_file_and_line_on_stderr_and_status_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "mine.yaml").write_text(text)
    result = run_set_env("--file", "mine.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"set_env.py: {expected}")
    assert result.stderr.count("\n") == 1


def test_an_empty_file_exports_nothing(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("# nothing yet\n")
    result = run_set_env("--file", "mine.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---------------------------------------------------------------- same reading rules as latigo


def test_the_script_reads_yaml_with_latigos_rules() -> None:
    spec = importlib.util.spec_from_file_location("set_env_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def rules(loader: type) -> dict:
        return {first: [(tag, regexp.pattern) for tag, regexp in found]
                for first, found in loader.yaml_implicit_resolvers.items()}

    assert rules(module.ConfigLoader) == rules(latigo_config._ConfigLoader)
