"""The deployment files agree with the code: Dockerfile, docker-compose.yml, deploy/k8s, supervisord.conf
and the container entrypoint.

The files are cross-checked here, in milliseconds: every `latigo ...` command they run is one the CLI
accepts, every LATIGO_* variable they set is one latigo reads, ports and probe paths are the ones
latigo.observability serves, and supervisord.conf is read by supervisor's own parser with exactly the
variables the entrypoint exports. The entrypoint itself runs for real, with stand-ins for `supervisord`
and `latigo` that record how they were called. The image and the compose stack are built and run with
podman by tests/container; the Kubernetes manifests are schema-checked by tests/unit/test_k8s_manifests.py.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from latigo import observability as obs
from latigo.cli import build_parser
from latigo.config import (
    COMPONENT_SECTIONS,
    CONFIG_FILE_ENV,
    DEFAULT_COMPONENTS,
    ENV_ALIASES,
    PLAIN_SECTIONS,
    load_config,
)
from latigo.durations import parse_duration
from latigo.errors import ConfigError
from latigo.factory import REGISTRY, settings_class
from latigo.settings import ExecutorSettings, MetricsSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
SUPERVISORD_CONF = ROOT / "supervisord.conf"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"

PLANNED_COMMANDS = {"scheduler", "executor", "backfill", "run", "status", "demo", "models", "sensors"}
"""Subcommands the CLI is meant to have; a file may name one before it exists (the case is skipped)."""
SHUTDOWN_TIMEOUT = ExecutorSettings().shutdown_timeout.total_seconds()


# ---------------------------------------------------------------- parsing helpers


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_kind(kind: str, name_part: str = "") -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d.get("kind") == kind and name_part in d["metadata"]["name"]]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        if doc.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def k8s_config() -> dict[str, Any]:
    (configmap,) = k8s_kind("ConfigMap")
    (text,) = configmap["data"].values()
    return yaml.safe_load(text)


def supervisord_parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(SUPERVISORD_CONF.read_text())
    return parser


_SEPARATORS = {"&&", "||", ";", "|", "&"}


def latigo_invocations(command: str | list[str]) -> list[list[str]]:
    """The argument lists given to latigo in a command (exec form or shell text, `sh -c` included)."""
    if isinstance(command, str):
        try:
            tokens = shlex.split(command, comments=True)
        except ValueError:
            return []
    else:
        tokens = list(command)
    found: list[list[str]] = []
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in _SEPARATORS:
            segment.append(token)
            continue
        found += _segment_invocation(segment)
        segment = []
    return found


def _segment_invocation(segment: list[str]) -> list[list[str]]:
    words = list(segment)
    while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("exec", "then", "do")):
        words.pop(0)
    if not words:
        return []
    if words[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and "-c" in words:
        return latigo_invocations(words[words.index("-c") + 1])
    if Path(words[0]).name == "latigo":
        return [words[1:]]
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "latigo"]:
        return [words[3:]]
    return []


def commands_in_files() -> list[tuple[str, list[str]]]:
    """(where, latigo arguments) for every latigo command a deployment file runs."""
    found: list[tuple[str, list[str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
            text = rest.split("CMD", 1)[1].strip() if keyword == "HEALTHCHECK" else rest
            command = json.loads(text) if text.startswith("[") else text
            found += [(f"Dockerfile {keyword}", argv) for argv in latigo_invocations(command)]
    for name, service in compose()["services"].items():
        for key in ("command", "entrypoint"):
            if key in service:
                found += [(f"docker-compose {name}", argv) for argv in latigo_invocations(service[key])]
    for name, spec in pod_specs():
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            argv = list(container.get("command", [])) + list(container.get("args", []))
            found += [(f"k8s {name}", a) for a in latigo_invocations(argv)]
    parser = supervisord_parser()
    for section in parser.sections():
        if section.startswith("program:"):
            command = parser.get(section, "command")
            found += [(f"supervisord {section}", argv) for argv in latigo_invocations(command)]
    for line in ENTRYPOINT.read_text().splitlines():
        found += [("entrypoint.sh", argv) for argv in latigo_invocations(line)]
    return found


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names |= set(action.choices)
    return names


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_value(value: Any, shell: dict[str, str]) -> str:
    """What docker compose makes of `${VAR:-default}` and friends, given the shell's variables."""

    def substitute(match: re.Match) -> str:
        name, operator, default = match.groups()
        current = shell.get(name)
        if operator in (":-", ":?") and not current:
            return default or ""
        if operator in ("-", "?") and current is None:
            return default or ""
        return current or ""

    return _INTERPOLATION.sub(substitute, str(value)).replace("$$", "$")


def latigo_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if "build" in s or "latigo" in s.get("image", "")}


def compose_env(service: dict[str, Any], shell: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as the container would get it (unset pass-through entries left out)."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    shell = shell or {}
    values = {k: shell.get(k) if v is None else compose_value(v, shell) for k, v in raw.items()}
    return {k: v for k, v in values.items() if v is not None}


def entrypoint_variables() -> set[str]:
    return set(re.findall(r"\$\{?(LATIGO_[A-Z0-9_]+)", ENTRYPOINT.read_text()))


def supervisord_variables() -> set[str]:
    return set(re.findall(r"%\(ENV_(LATIGO_[A-Z0-9_]+)\)s", SUPERVISORD_CONF.read_text()))


def code_variables() -> set[str]:
    """LATIGO_* names (without '__') that latigo's own code reads."""
    names: set[str] = set()
    for path in (ROOT / "latigo").rglob("*.py"):
        names |= set(re.findall(r"[\"'](LATIGO_[A-Z0-9_]+)[\"']", path.read_text()))
    return {n for n in names if "__" not in n}


def deployment_variables() -> set[str]:
    """Variables the container plumbing reads (entrypoint, supervisord.conf, the health check)."""
    return entrypoint_variables() | supervisord_variables() | code_variables()


ANY_TYPE = None
"""Context of a pass-through variable: the shell decides the provider type, so any type's key is valid."""


def env_settings_in_files() -> list[tuple[str, str, dict[str, str] | None]]:
    """(where, variable, section -> type in that context) for every LATIGO_* variable a file sets."""
    found: list[tuple[str, str, dict[str, str] | None]] = []
    for name in dockerfile_env():
        found.append(("Dockerfile ENV", name, {}))
    for service_name, service in latigo_services().items():
        env = compose_env(service)
        types = {s: env.get(f"LATIGO_{s.upper()}__TYPE", DEFAULT_COMPONENTS.get(s, {}).get("type", "")) for s in
                 COMPONENT_SECTIONS}
        for name, value in service.get("environment", {}).items():
            found.append((f"docker-compose {service_name}", name, ANY_TYPE if value is None else types))
    config = k8s_config()
    k8s_types = {s: (config.get(s) or {}).get("type", DEFAULT_COMPONENTS.get(s, {}).get("type", "")) for s in
                 COMPONENT_SECTIONS}
    for name, spec in pod_specs():
        for container in spec["containers"]:
            found += [(f"k8s {name}", e["name"], k8s_types) for e in container.get("env", [])]
    for secret in k8s_kind("Secret"):
        found += [(f"k8s Secret {secret['metadata']['name']}", key, k8s_types) for key in secret["stringData"]]
    parser = supervisord_parser()
    for section in parser.sections():
        if parser.has_option(section, "environment"):
            for name in re.findall(r"(LATIGO_[A-Z0-9_]+)=", parser.get(section, "environment")):
                found.append((f"supervisord {section}", name, {}))
    return [(where, name, types) for where, name, types in found if name.startswith("LATIGO_")]


# ---------------------------------------------------------------- every latigo command exists


def _command_cases() -> list[Any]:
    return [pytest.param(argv, id=f"{where}: latigo {' '.join(argv)}") for where, argv in commands_in_files()]


def test_the_files_run_latigo_commands():
    commands = {argv[0] for _, argv in commands_in_files() if argv and not argv[0].startswith("-")}
    assert {"db", "scheduler", "executor"} <= commands


@pytest.mark.parametrize("argv", _command_cases())
def test_every_latigo_command_in_the_files_is_one_the_cli_accepts(argv, capsys):
    parser = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    if name is not None and name not in subcommands(parser):
        assert name in PLANNED_COMMANDS, f"`latigo {' '.join(argv)}`: no such command"
        pytest.skip(f"`latigo {name}` is not in the CLI yet")
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"`latigo {' '.join(argv)}` is rejected by the CLI: {capsys.readouterr().err}"


# ---------------------------------------------------------------- every LATIGO_* variable is read


def _variable_cases() -> list[Any]:
    seen = set()
    cases = []
    for where, name, types in env_settings_in_files():
        if (where, name) not in seen:
            seen.add((where, name))
            cases.append(pytest.param(name, types, id=f"{where}: {name}"))
    return cases


@pytest.mark.parametrize(("name", "types"), _variable_cases())
def test_every_latigo_variable_in_the_files_is_one_latigo_reads(name, types):
    if name in ENV_ALIASES or name == CONFIG_FILE_ENV:
        return
    if "__" not in name:
        assert name in deployment_variables(), f"{name} is read by neither latigo, the entrypoint nor supervisord"
        return
    section, *keys = name[len("LATIGO_") :].lower().split("__")
    if section in PLAIN_SECTIONS:
        fields = {f.name: f for f in dataclasses.fields(PLAIN_SECTIONS[section])}
        assert keys[0] in fields, f"{name}: {section} has no key {keys[0]!r} (keys: {', '.join(fields)})"
        return
    assert section in COMPONENT_SECTIONS, f"{name}: no config section {section!r}"
    if keys == ["type"]:
        return
    kinds = sorted(REGISTRY[section]) if types is ANY_TYPE else [types.get(section, "")]
    settings, missing = _component_settings(section, kinds)
    if any(keys[0] in {f.name for f in dataclasses.fields(cls)} for cls in settings):
        return
    if missing:
        pytest.skip(f"{name}: {section} types {', '.join(missing)} are not implemented yet")
    raise AssertionError(f"{name}: no {section} type ({', '.join(kinds)}) has the key {keys[0]!r}")


def _component_settings(section: str, kinds: list[str]) -> tuple[list[type], list[str]]:
    """The settings classes of the importable kinds, and the kinds that cannot be imported (yet)."""
    found, missing = [], []
    for kind in kinds:
        try:
            found.append(settings_class(section, kind))
        except ConfigError as exc:
            if "cannot be loaded" not in str(exc):
                raise
            missing.append(kind)
    return found, missing


def _load_or_skip(path: Path, env: dict[str, str]):
    try:
        return load_config(path, env)
    except ConfigError as exc:
        if "cannot be loaded" in str(exc):
            pytest.skip(f"a configured type is not implemented yet: {exc}")
        raise


@pytest.mark.parametrize("service", sorted(latigo_services()))
def test_the_compose_environment_is_a_valid_config(service, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    config = _load_or_skip(empty, compose_env(compose()["services"][service]))
    assert config.database.url.startswith("postgresql://")
    assert "@postgres:" in config.database.url


def test_the_k8s_config_and_secret_are_a_valid_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(k8s_config()))
    (secret,) = k8s_kind("Secret")
    config = _load_or_skip(path, dict(secret["stringData"]))
    assert config.task_queue.type == "eventhub"


# ---------------------------------------------------------------- supervisord.conf


def test_supervisord_conf_has_the_programs_and_the_options_that_matter():
    parser = supervisord_parser()
    assert {"supervisord", "unix_http_server", "supervisorctl", "rpcinterface:supervisor"} <= set(parser.sections())
    assert parser.get("supervisord", "nodaemon") == "true"
    socket_file = parser.get("unix_http_server", "file")
    assert "%(ENV_" in socket_file, "the socket path comes from the environment (tests use a temp dir)"
    assert parser.get("supervisorctl", "serverurl") == f"unix://{socket_file}"
    for program in ("scheduler", "executor"):
        section = f"program:{program}"
        assert parser.has_section(section)
        assert parser.get(section, "autostart").startswith("%(ENV_"), "LATIGO_ROLE decides what starts"
        assert parser.get(section, "autorestart") == "true"
        assert int(parser.get(section, "startsecs")) >= 1
        assert int(parser.get(section, "startretries")) >= 3
        assert parser.get(section, "stopsignal") == "TERM"
        assert int(parser.get(section, "stopwaitsecs")) > SHUTDOWN_TIMEOUT
        for stream in ("stdout", "stderr"):
            assert parser.get(section, f"{stream}_logfile") == f"/dev/{stream}"
            assert parser.get(section, f"{stream}_logfile_maxbytes") == "0"
        assert 'PYTHONUNBUFFERED="1"' in parser.get(section, "environment")
    assert parser.get("program:executor", "numprocs") == "%(ENV_LATIGO_EXECUTORS)s"
    assert "%(process_num)" in parser.get("program:executor", "process_name")


def test_every_variable_supervisord_expands_gets_a_default_from_the_entrypoint():
    text = ENTRYPOINT.read_text()
    for name in supervisord_variables():
        assert re.search(rf'(: "\$\{{{name}:=|\b{name}=)', text), f"entrypoint.sh sets no default for {name}"
        assert re.search(rf"export [^\n]*\b{name}\b", text), f"entrypoint.sh does not export {name}"


# ---------------------------------------------------------------- the entrypoint, run for real


def fake_tools(directory: Path) -> Path:
    """`supervisord` and `latigo` stand-ins that append their arguments and environment to calls.log."""
    log = directory / "calls.log"
    for tool in ("supervisord", "latigo"):
        script = directory / tool
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"with open({str(log)!r}, 'a') as out:\n"
            f"    out.write(json.dumps({{'tool': {tool!r}, 'args': sys.argv[1:], 'env': dict(os.environ)}}) + '\\n')\n"
        )
        script.chmod(0o755)
    return log


def run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = fake_tools(bin_dir)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    full_env = {**base, "PATH": f"{bin_dir}:{base['PATH']}", "LATIGO_RUN_DIR": str(tmp_path / "run"), **env}
    result = subprocess.run(["sh", str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


@pytest.mark.parametrize(
    ("role", "scheduler", "executor"),
    [("all", "true", "true"), ("scheduler", "true", "false"), ("executor", "false", "true")],
)
def test_the_entrypoint_turns_the_role_into_autostart_flags_and_execs_supervisord(tmp_path, role, scheduler, executor):
    result, calls = run_entrypoint(tmp_path, {"LATIGO_ROLE": role})
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call["tool"] == "supervisord"
    assert call["args"][:2] == ["-n", "-c"]
    assert Path(call["args"][2]).resolve() == SUPERVISORD_CONF
    assert call["env"]["LATIGO_SCHEDULER_AUTOSTART"] == scheduler
    assert call["env"]["LATIGO_EXECUTOR_AUTOSTART"] == executor
    assert (tmp_path / "run").is_dir()


def test_supervisor_reads_the_conf_with_the_entrypoint_environment(tmp_path, monkeypatch):
    from supervisor.options import ServerOptions

    _, (call,) = run_entrypoint(tmp_path, {"LATIGO_ROLE": "executor", "LATIGO_EXECUTORS": "3"})
    for name in [n for n in os.environ if n.startswith("LATIGO_")]:
        monkeypatch.delenv(name)
    for name, value in call["env"].items():
        if name.startswith("LATIGO_"):
            monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.configfile = str(SUPERVISORD_CONF)
    options.process_config(do_usage=False)
    processes = {p.name: p for group in options.process_group_configs for p in group.process_configs}
    assert set(processes) == {"scheduler", "executor_01", "executor_02", "executor_03"}
    assert not processes["scheduler"].autostart
    assert all(processes[f"executor_0{n}"].autostart for n in (1, 2, 3))
    assert all(p.stopwaitsecs > SHUTDOWN_TIMEOUT for p in processes.values())
    (server,) = options.configroot.supervisord.server_configs
    assert server["file"] == str(tmp_path / "run" / "supervisor.sock")
    # The metrics ports supervisord hands out are the ones the container health check probes.
    ports = {name: _metrics_port(p) for name, p in processes.items()}
    assert len(set(ports.values())) == len(ports), "every program needs its own metrics port"
    assert sorted(ports.values()) == obs.supervised_ports({"LATIGO_ROLE": "all", "LATIGO_EXECUTORS": "3"})


def _metrics_port(process: Any) -> int:
    if "LATIGO_METRICS__PORT" in (process.environment or {}):
        return int(process.environment["LATIGO_METRICS__PORT"])
    match = re.search(r"LATIGO_METRICS__PORT=\$\(\((\d+)\+(\d+)\)\)", process.command)
    assert match, f"{process.name}: no LATIGO_METRICS__PORT in {process.command!r}"
    return int(match.group(1)) + int(match.group(2))


def test_the_entrypoint_migrates_first_when_asked(tmp_path):
    result, calls = run_entrypoint(tmp_path, {"LATIGO_MIGRATE": "1"})
    assert result.returncode == 0, result.stderr
    assert [(c["tool"], c["args"][:2]) for c in calls] == [("latigo", ["db", "upgrade"]), ("supervisord", ["-n", "-c"])]


def test_the_entrypoint_runs_its_arguments_instead_of_supervisord(tmp_path):
    result, calls = run_entrypoint(tmp_path, {}, "latigo", "executor")
    assert result.returncode == 0, result.stderr
    assert [(c["tool"], c["args"]) for c in calls] == [("latigo", ["executor"])]
    assert calls[0]["env"]["LATIGO_EXECUTORS"] == "2"


@pytest.mark.parametrize("env", [{"LATIGO_ROLE": "everything"}, {"LATIGO_EXECUTORS": "0"}, {"LATIGO_EXECUTORS": "x"}])
def test_the_entrypoint_refuses_a_bad_role_or_executor_count(tmp_path, env):
    result, calls = run_entrypoint(tmp_path, env)
    assert result.returncode == 2
    assert next(iter(env)) in result.stderr
    assert calls == []


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_base_user_layers_and_entrypoint():
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    copies = [(i, rest.split()) for i, (k, rest) in enumerate(instructions) if k == "COPY"]
    code_copy = next(i for i, args in copies if args[0].rstrip("/") == "latigo")
    deps_copy = next(i for i, args in copies if "setup.py" in args)
    deps_install = next(i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install" in rest)
    assert deps_copy < deps_install < code_copy, "dependencies are installed in a layer before the code is copied"
    assert keywords.index("USER") > deps_install
    (entrypoint,) = [json.loads(rest) for k, rest in instructions if k == "ENTRYPOINT"]
    assert entrypoint[0].endswith("deploy/entrypoint.sh")
    assert any(k == "COPY" and "deploy/entrypoint.sh" in rest for k, rest in instructions)


def test_dockerfile_leaves_no_compilers_or_secrets():
    text = DOCKERFILE.read_text()
    for tool in ("build-essential", "gcc", "g++", "clang", "make "):
        assert not re.search(rf"apt-get install[^\n]*\b{re.escape(tool)}", text), f"{tool} installed in the image"
    for keyword, rest in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(?i)(password|secret|token|connection_string|key=)", rest), rest


def test_dockerfile_copies_only_existing_files_the_context_keeps():
    ignored = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            clean = source.rstrip("/")
            hits = [p for p in ignored if fnmatch.fnmatch(clean, p.rstrip("/")) or clean.startswith(p.rstrip("/"))]
            assert not hits, f"COPY {source} is excluded from the build context by .dockerignore {hits}"


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", "local_config.yaml", "*.db", ".env"} <= ignored


def test_dockerfile_health_check_probes_the_supervised_programs():
    (check,) = [rest for k, rest in dockerfile_instructions() if k == "HEALTHCHECK"]
    command = json.loads(check.split("CMD", 1)[1])
    assert command == ["python", "-m", "latigo.observability"]
    env = dockerfile_env()
    assert int(env["LATIGO_METRICS_BASE_PORT"]) == MetricsSettings().port
    exposed = {int(p) for k, rest in dockerfile_instructions() if k == "EXPOSE" for p in rest.split()}
    assert set(obs.supervised_ports(env)) <= exposed


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_has_the_whole_stack():
    services = compose()["services"]
    assert {"postgres", "influxdb", "migrate", "scheduler", "executor"} <= set(services)
    assert services["influxdb"]["image"] == "influxdb:1.8"
    assert services["postgres"]["image"].startswith("postgres")
    for store in ("postgres", "influxdb"):
        assert services[store].get("volumes"), f"{store} keeps its data in a volume"
        assert services[store]["healthcheck"]["test"], f"{store} has a health check"
    assert latigo_invocations(services["migrate"]["command"]) == [["db", "upgrade"]]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_runs_one_scheduler_and_two_executors():
    services = latigo_services()
    roles: dict[str, int] = {"scheduler": 0, "executor": 0}
    for service in services.values():
        env = compose_env(service)
        role = env.get("LATIGO_ROLE")
        if role not in roles:
            continue
        replicas = int(service.get("deploy", {}).get("replicas", 1))
        per_container = int(env.get("LATIGO_EXECUTORS", 2)) if role == "executor" else 1
        roles[role] += replicas * per_container
    assert roles == {"scheduler": 1, "executor": 2}


def test_compose_services_wait_for_healthy_stores_and_a_finished_migration():
    for name, service in latigo_services().items():
        if name == "migrate":
            continue
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        grace = parse_duration(service["stop_grace_period"])
        stopwait = int(supervisord_parser().get("program:executor", "stopwaitsecs"))
        assert grace > timedelta(seconds=stopwait), f"{name}: docker would kill supervisord before it stops"


def test_compose_passes_the_shell_latigo_variables_through():
    for name, service in latigo_services().items():
        raw = service.get("environment", {})
        assert "LATIGO_INTERNAL_EVENT_HUB" in raw, name
        for variable, value in raw.items():
            if value is None or variable == "LATIGO_ROLE":
                continue
            referenced = _INTERPOLATION.findall(str(value))
            assert referenced and referenced[0][0] == variable, f"{name}: {variable} does not pass ${{{variable}}}"
        shell = {"LATIGO_DATABASE__URL": "postgresql://me@db/x", "LATIGO_INTERNAL_EVENT_HUB": "Endpoint=sb://x/"}
        env = compose_env(service, shell)
        assert env["LATIGO_DATABASE__URL"] == "postgresql://me@db/x"
        assert env["LATIGO_INTERNAL_EVENT_HUB"] == "Endpoint=sb://x/"
        assert "LATIGO_INTERNAL_EVENT_HUB" not in compose_env(service), "unset pass-through stays unset"


def test_the_readme_recipe_leaves_compose_its_postgresql(tmp_path):
    """`eval "$(./set_env.py)"` on a config made from the template exports no database URL, so every
    latigo container gets compose's PostgreSQL, not a SQLite file of its own."""
    config = tmp_path / "local_config.yaml"
    set_env = [sys.executable, str(ROOT / "set_env.py"), "--file", str(config)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    subprocess.run(set_env, cwd=tmp_path, env=clean, check=True, capture_output=True)  # creates the file
    dump = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    script = f'eval "$({" ".join(shlex.quote(a) for a in set_env)})" && {dump}'
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], cwd=tmp_path, env=clean, check=True,
                            capture_output=True, text=True)
    shell = {k: v for k, v in json.loads(result.stdout).items() if k.startswith("LATIGO_")}
    assert shell, "the template exports its values"
    assert not {"LATIGO_DATABASE__URL", "LATIGO_INTERNAL_DATABASE"} & set(shell)
    (postgres,) = [s for s in compose()["services"].values() if str(s.get("image", "")).startswith("postgres")]
    env = postgres["environment"]
    expected = f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    for name, service in latigo_services().items():
        assert compose_env(service, shell)["LATIGO_DATABASE__URL"] == expected, name


def test_compose_scheduler_publishes_its_metrics_port():
    scheduler = compose()["services"]["scheduler"]
    published = {int(str(p).rsplit(":", 1)[1]) for p in scheduler.get("ports", [])}
    assert published <= set(obs.supervised_ports({"LATIGO_ROLE": "scheduler"}))


# ---------------------------------------------------------------- deploy/k8s


def deployment(component: str) -> dict[str, Any]:
    (found,) = k8s_kind("Deployment", component)
    return found


def test_k8s_scheduler_is_a_single_recreated_pod():
    scheduler = deployment("scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_executors_are_replicated_and_protected_by_a_disruption_budget():
    executor = deployment("executor")
    assert executor["spec"]["replicas"] >= 2
    (budget,) = k8s_kind("PodDisruptionBudget")
    labels = executor["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_pods_mount_the_config_and_read_the_secret():
    (configmap,) = k8s_kind("ConfigMap")
    (secret,) = k8s_kind("Secret")
    (key,) = configmap["data"]
    for name, spec in pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        config_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "latigo-config")
        assert env[CONFIG_FILE_ENV] == f"{mounts[config_volume]}/{key}", name
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"], name
        assert container["resources"]["requests"], name
        assert secret["metadata"]["name"] == "latigo-secrets"


def test_k8s_probes_and_ports_match_the_endpoints():
    config_port = k8s_config().get("metrics", {}).get("port", MetricsSettings().port)
    for component in ("scheduler", "executor"):
        pod = deployment(component)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == obs.HEALTH_PATH
        assert container["readinessProbe"]["httpGet"]["path"] == obs.READY_PATH
        for probe in ("livenessProbe", "readinessProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == config_port
        annotations = pod["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/path") == obs.METRICS_PATH
        assert int(annotations["prometheus.io/port"]) == config_port


def test_k8s_grace_period_exceeds_the_executor_shutdown_timeout():
    config = k8s_config()
    timeout = parse_duration(str(config.get("executor", {}).get("shutdown_timeout", f"{SHUTDOWN_TIMEOUT:g}s")))
    for component in ("scheduler", "executor"):
        grace = deployment(component)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > timeout.total_seconds(), component


def test_k8s_has_a_migration_job():
    (job,) = k8s_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert latigo_invocations(container.get("command", []) + container["args"]) == [["db", "upgrade"]]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
