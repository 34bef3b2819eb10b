"""Running latigo's real command as child processes in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def latigo(config: Path, *args: str, **popen: Any) -> subprocess.Popen:
    """Start `python -m latigo --config CONFIG ARGS...` from the repository root (stderr joins stdout
    unless `stderr=` is given)."""
    popen.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen([sys.executable, "-m", "latigo", "--config", str(config), *args], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, text=True, **popen)


def latigo_ok(config: Path, *args: str, timeout: float = 120, **popen: Any) -> str:
    """Run to completion within `timeout` seconds; fail the test with the output when the exit code is not
    0, or when it overruns (after killing it, so a hung command leaves nothing behind)."""
    process = latigo(config, *args, **popen)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"latigo {' '.join(args)} did not finish within {timeout:.0f}s:\n{output[-4000:]}")
    assert process.returncode == 0, f"latigo {' '.join(args)} exited {process.returncode}:\n{output[-4000:]}"
    return output


def static_models_config(path: Path, url: str, task_queue: dict[str, Any], models: list[str], sleep: float,
                         concurrency: int) -> Path:
    """A loop config over tests.support.providers:StaticModels, for the process-level tests."""
    provider = "tests.support.providers:StaticModels"
    return write_config(
        path,
        database={"url": url},
        task_queue=task_queue,
        sensor_data={"type": provider},
        model_information={"type": provider, "models": models, "sleep": sleep},
        model_execution={"type": provider, "models": models, "sleep": sleep},
        scheduler={"interval": "10m", "delay": "0s"},
        executor={"concurrency": concurrency, "shutdown_timeout": "10s", "poll_timeout": "500ms"},
        metrics={"enabled": False},
    )
