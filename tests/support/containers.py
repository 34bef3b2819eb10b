"""Containers for the tests: Debian's podman (as root), stand-in base images, the latigo image.

No image registry is reachable from the test machines, so the images the project's Dockerfile and
docker-compose.yml start FROM are stand-ins built here from Debian bookworm and tagged with the
official names (test support only: the Dockerfile and compose file stay what a Docker user runs):

- docker.io/library/python:3.11-slim: `debootstrap --variant=minbase` with python3, pip and venv,
  the machine's CA bundle and pip.conf, no EXTERNALLY-MANAGED marker, `python`/`pip` on /usr/local/bin;
- docker.io/library/postgres:16 and docker.io/library/influxdb:1.8: built on that base from
  tests/support/container_images/, with Debian's postgresql and influxdb packages behind entrypoints
  that honour the official images' variables (POSTGRES_USER/PASSWORD/DB, INFLUXDB_DB), ports and the
  commands the compose health checks run (pg_isready, curl).

podman runs with runc and cgroupfs and a containers.conf without default ulimits (crun, systemd
cgroups and the default ulimits fail on these VMs): `CONTAINERS_CONF` points at a file in the cache
directory, so the machine's own configuration is left alone. Images are built in the docker format
(`BUILDAH_FORMAT=docker`), which keeps the Dockerfile's HEALTHCHECK.

Built images stay in podman's store and are reused (`podman image exists`); the debootstrap tree is
cached under ${LATIGO_TEST_CACHE:-~/.cache/latigo-test}. A first build takes about 1.5 minutes.

    python -m tests.support.containers        # build the base images now (.ci/run does this)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(__file__).resolve().parent / "container_images"
CACHE_DIR = Path(os.environ.get("LATIGO_TEST_CACHE") or "~/.cache/latigo-test").expanduser()

PYTHON_BASE = "docker.io/library/python:3.11-slim"
POSTGRES = "docker.io/library/postgres:16"
INFLUXDB = "docker.io/library/influxdb:1.8"
SERVICE_IMAGES = {POSTGRES: IMAGES_DIR / "postgres", INFLUXDB: IMAGES_DIR / "influxdb"}

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
PODMAN_GLOBAL_ARGS = PODMAN[1:]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONF = Path("/etc/pip.conf")
BASE_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"


class ContainerError(AssertionError):
    """A container step failed; the message carries the command's output or the container's logs."""


# ---------------------------------------------------------------- podman


def containers_conf() -> Path:
    """A containers.conf without default ulimits, with runc and cgroupfs (so that podman-compose's own
    podman calls need no extra arguments), in the cache directory (written once)."""
    path = CACHE_DIR / "containers.conf"
    text = ("# Written by tests/support/containers.py\n[containers]\ndefault_ulimits = []\n\n"
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for podman and podman-compose: our containers.conf, docker-format builds,
    and none of the caller's LATIGO_* variables (they would leak into compose's interpolation)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    env["CONTAINERS_CONF"] = str(containers_conf())
    env["BUILDAH_FORMAT"] = "docker"
    env.update(extra or {})
    return env


def unavailable_reason() -> str | None:
    """Why containers cannot run here, or None."""
    if sys.platform != "linux":
        return "containers need Linux"
    if os.geteuid() != 0:
        return "podman with runc and cgroupfs needs root here"
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc debootstrap)"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True, input: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` (runc, cgroupfs, our containers.conf); output captured as text."""
    command = [*PODMAN, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=input,
                                env=environment(env))
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"`{' '.join(command)}` did not finish within {timeout:g} s:\n"
                             f"{_text(exc.stdout)}{_text(exc.stderr)}") from None
    if check and result.returncode != 0:
        raise ContainerError(f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout[-3000:]}"
                             f"{result.stderr[-3000:]}")
    return result


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")[-3000:]
    return (data or "")[-3000:]


def image_exists(reference: str) -> bool:
    return podman("image", "exists", reference, check=False).returncode == 0


def image_size(reference: str) -> int:
    """The image's size in bytes, as `podman image inspect` reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", reference).stdout.strip())


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time across processes (two test sessions must not debootstrap one tree)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- stand-in base images


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*.list")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            if re.search(r"^Suites:.*\bbookworm\b", stanza, re.M) and "security" not in stanza:
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if match and "debian" in match.group(1):
                    return match.group(1).rstrip("/")
        for line in text.splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if match and "security" not in match.group(1) and "debian" in match.group(1):
                return match.group(1).rstrip("/")
    return DEFAULT_MIRROR


def _python_base_tree() -> Path:
    """The debootstrap tree of the python stand-in, built once and kept in the cache."""
    tree = CACHE_DIR / "rootfs" / "python-3.11-slim"
    done = tree.parent / "python-3.11-slim.complete"
    if done.exists() and (tree / "usr" / "bin" / "python3").exists():
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(tree),
               debian_mirror()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        log = tree / "debootstrap" / "debootstrap.log"
        detail = log.read_text()[-3000:] if log.exists() else ""
        raise ContainerError(f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout[-2000:]}"
                             f"{result.stderr[-2000:]}\n{detail}")
    _customise_python_tree(tree)
    done.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return tree


def _customise_python_tree(tree: Path) -> None:
    """What python:3.11-slim has and a minbase tree lacks; this machine's CA bundle and pip config
    (PyPI is reached through a proxy whose CA only this machine's bundle holds)."""
    shutil.copyfile(HOST_CA_BUNDLE, tree / "etc/ssl/certs/ca-certificates.crt")
    if HOST_PIP_CONF.exists():
        shutil.copyfile(HOST_PIP_CONF, tree / "etc/pip.conf")
    for marker in (tree / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    local_bin = tree / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("python3", "/usr/bin/python3"), ("pip", "/usr/bin/pip3"),
                         ("pip3", "/usr/bin/pip3")):
        link = local_bin / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(target)
    # Like Debian's container images: no daemon starts while a package installs, no apt caches.
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (tree / cache).glob("*"):
            if item.is_file():
                item.unlink()


def ensure_python_base() -> None:
    """The docker.io/library/python:3.11-slim stand-in (imported from the debootstrap tree)."""
    if image_exists(PYTHON_BASE):
        return
    with _locked("python-base"):
        if image_exists(PYTHON_BASE):
            return
        tree = _python_base_tree()
        tar = subprocess.Popen(["tar", "-C", str(tree), "--exclude=./debootstrap", "-c", "."],
                               stdout=subprocess.PIPE)
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                   'CMD ["python3"]']
        args = [arg for change in changes for arg in ("--change", change)]
        result = subprocess.run([*PODMAN, "import", *args, "-", PYTHON_BASE], stdin=tar.stdout,
                                capture_output=True, text=True, timeout=600, env=environment())
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if result.returncode != 0 or tar.returncode != 0:
            raise ContainerError(f"podman import of {tree} failed:\n{result.stdout}{result.stderr}")


def ensure_service_image(reference: str) -> None:
    """The postgres:16 or influxdb:1.8 stand-in, built on the python stand-in."""
    if image_exists(reference):
        return
    ensure_python_base()
    with _locked("service-images"):
        if image_exists(reference):
            return
        build(SERVICE_IMAGES[reference], reference, timeout=900)


def ensure_base_images(references: Sequence[str] = (PYTHON_BASE, POSTGRES, INFLUXDB)) -> None:
    for reference in references:
        if reference == PYTHON_BASE:
            ensure_python_base()
        else:
            ensure_service_image(reference)


# ---------------------------------------------------------------- building and running


@dataclass
class Build:
    seconds: float
    output: str

    def step_was_cached(self, marker: str) -> bool:
        """Whether the build step whose text contains `marker` came from podman's layer cache."""
        steps = [s for s in re.split(r"^STEP \d+/\d+: ", self.output, flags=re.M) if marker in s]
        return bool(steps) and all("--> Using cache" in s for s in steps)


def build(context: Path, tag: str, timeout: float = 900, dockerfile: Path | None = None) -> Build:
    """`podman build --network host` in the docker format (which keeps HEALTHCHECK). The image the tag
    named before is removed when nothing else uses it, so repeated runs do not pile up images."""
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    began = time.monotonic()
    args = ["build", "--network", "host", "--format", "docker", "-t", tag]
    if dockerfile is not None:
        args += ["-f", str(dockerfile)]
    result = podman(*args, str(context), timeout=timeout)
    seconds = time.monotonic() - began
    current = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if previous and previous != current:
        podman("rmi", previous, check=False)  # refused while a container or another tag uses it
    return Build(seconds, result.stdout + result.stderr)


def free_port_run(count: int, start: int = 20000, end: int = 60000) -> int:
    """The first of `count` consecutive TCP ports free on this host (for --network host containers)."""
    for base in range(start + os.getpid() % 1000 * 20, end, count + 1):
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("0.0.0.0", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise ContainerError(f"no {count} consecutive free ports between {start} and {end}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Container:
    """A container started with `podman run -d`; removed by `remove()` (the fixtures call it)."""

    def __init__(self, image: str, *command: str, env: dict[str, str] | None = None,
                 options: Sequence[str] = (), name: str | None = None) -> None:
        self.name = name or f"latigo-test-{uuid.uuid4().hex[:10]}"
        args = ["run", "-d", "--name", self.name, *options]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        podman(*args, image, *command, timeout=120)

    @classmethod
    def attach(cls, name: str) -> Container:
        """A container started by someone else (podman-compose), by name."""
        container = cls.__new__(cls)
        container.name = name
        return container

    def logs(self, tail: int | None = 200) -> str:
        """The container's output, stdout and stderr interleaved as written (the last `tail` lines)."""
        args = [*PODMAN, "logs", *(["--tail", str(tail)] if tail is not None else []), self.name]
        try:
            result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                                    env=environment())
        except subprocess.TimeoutExpired:
            return f"(podman logs {self.name} timed out)"
        return result.stdout if tail is None else result.stdout[-12000:]

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name, timeout=30).stdout.strip()

    def state(self) -> str:
        return self.inspect("{{.State.Status}}")

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def exec(self, *command: str, input: str | None = None, timeout: float = 120, check: bool = True,
             options: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        args = ["exec", *(["-i"] if input is not None else []), *options, self.name, *command]
        result = podman(*args, input=input, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"`podman exec {self.name} {' '.join(command)}` exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n--- container logs ---\n"
                                 f"{self.logs()}")
        return result

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's HEALTHCHECK command once, as the engine's timer would (0: healthy)."""
        return podman("healthcheck", "run", self.name, check=False, timeout=60)

    def stop(self, grace: int) -> float:
        """`podman stop -t GRACE` (SIGTERM, then SIGKILL after GRACE seconds); returns the seconds taken."""
        began = time.monotonic()
        podman("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - began

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False, timeout=120)


class ComposeProject:
    """The project's docker-compose.yml under podman-compose, each command run by bash after `prefix`
    (e.g. the README's `eval "$(./set_env.py)"`), so the shell's exports reach compose as they would."""

    def __init__(self, name: str, compose_file: Path, prefix: str = "", env: dict[str, str] | None = None) -> None:
        self.name, self.compose_file, self.prefix = name, compose_file, prefix
        self.env = environment(env)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        if shutil.which("podman-compose") is None:
            raise ContainerError("podman-compose is not installed (pip install podman-compose)")
        script = f'{self.prefix}\nexec podman-compose -p "$0" -f "$1" "${{@:2}}"'
        command = ["bash", "-c", script, self.name, str(self.compose_file), *args]
        try:
            result = subprocess.run(command, cwd=self.compose_file.parent, capture_output=True, text=True,
                                    timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired as exc:
            raise ContainerError(f"`podman-compose {' '.join(args)}` did not finish within {timeout:g} s:\n"
                                 f"{_text(exc.stdout)}{_text(exc.stderr)}") from None
        if check and result.returncode != 0:
            raise ContainerError(f"`podman-compose {' '.join(args)}` exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
        return result

    def container(self, service: str, number: int = 1) -> str:
        """podman-compose's container name for a service's replica."""
        return f"{self.name}_{service}_{number}"

    def containers(self) -> dict[str, str]:
        """name -> state of every container of the project."""
        names = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.name}", "--format",
                       "{{.Names}}", timeout=60).stdout.split()
        if not names:
            return {}
        states = podman("inspect", "--format", "{{.Name}} {{.State.Status}}", *names, check=False, timeout=60).stdout
        return dict(line.split(" ", 1) for line in states.splitlines() if " " in line)

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of the project that still exist."""
        label = f"label=io.podman.compose.project={self.name}"
        found = [f"container {c}" for c in self.containers()]
        volumes = podman("volume", "ls", "--filter", label, "--format", "{{.Name}}", timeout=60).stdout.split()
        found += [f"volume {v}" for v in volumes]
        networks = podman("network", "ls", "--format", "{{.Name}}", timeout=60).stdout.split()
        found += [f"network {n}" for n in networks if n.startswith(f"{self.name}_")]
        return found

    def logs(self) -> str:
        parts = []
        for name in self.containers():
            parts.append(f"--- {name} ---\n{Container.attach(name).logs(tail=60)}")
        return "\n".join(parts)[-20000:]

    def force_remove(self) -> None:
        """Whatever `down -v` left behind (after a failed test)."""
        for name in self.containers():
            podman("rm", "-f", "-t", "0", name, check=False, timeout=120)
        label = f"label=io.podman.compose.project={self.name}"
        for volume in podman("volume", "ls", "--filter", label, "--format", "{{.Name}}", check=False).stdout.split():
            podman("volume", "rm", "-f", volume, check=False)
        podman("network", "rm", "-f", f"{self.name}_default", check=False)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] | None = None,
               every: float = 1.0) -> Any:
    """The first truthy value of `predicate()`; a ContainerError naming `what` (with the logs) at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ContainerError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"\nlast error: {last_error}" if last_error else ""
            shown = f"\n--- logs ---\n{logs()}" if logs else ""
            raise ContainerError(f"timed out after {timeout:g} s waiting for {what}{detail}{shown}")
        time.sleep(every)


def main() -> int:
    reason = unavailable_reason()
    if reason:
        print(f"containers: {reason}", file=sys.stderr)
        return 1
    for reference in (PYTHON_BASE, POSTGRES, INFLUXDB):
        began = time.monotonic()
        cached = image_exists(reference)
        ensure_base_images([reference])
        state = "cached" if cached else f"built in {time.monotonic() - began:.0f} s"
        print(f"{reference}: {state}, {image_size(reference) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
