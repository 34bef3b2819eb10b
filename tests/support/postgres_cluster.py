"""A private PostgreSQL cluster the tests may stop, restart and kill: never the machine's shared server.

`initdb` into a temporary directory (as the `postgres` OS user when run as root: initdb refuses root),
trust authentication, listening on 127.0.0.1 on a free port with its socket in the same directory.
Durability is switched off (fsync, synchronous_commit, full_page_writes): the cluster is thrown away
at the end, and a restart with `-m fast` still shuts down cleanly.

Cost, measured on the 2-core CI machine: initdb + start about 1.5 s, a restart about 0.3 s plus the
downtime asked for, stop + removal about 0.2 s. The chaos suite starts one per session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

OS_USER = "postgres"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def find_bindir() -> Path | None:
    """The directory with initdb and pg_ctl: $LATIGO_TEST_PG_BINDIR, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's layout), else the PATH's."""
    candidates = [os.environ.get("LATIGO_TEST_PG_BINDIR", "")]
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda path: _version(path), reverse=True)
    initdb = shutil.which("initdb")
    candidates.append(str(Path(initdb).resolve().parent) if initdb else "")
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable_reason() -> str:
    """'' when a private cluster can be started here, else why not."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user for initdb"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return ""


@dataclass
class PostgresCluster:
    """A running private cluster; `url(name)` is a database on it (user postgres, trust)."""

    bindir: Path
    directory: Path
    port: int
    restarts: int = field(default=0, init=False)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # ------------------------------------------------------------------ server control

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        result = subprocess.run(_as_os_user(command), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                               f"{self.log_tail()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} " + " ".join(f"-c {k}={v}" for k, v in SETTINGS.items())
        self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.log_path), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-w", "-t", "30", "-m", mode)

    def restart(self, down_for: float = 0.0, mode: str = "fast") -> None:
        """Stop (every connection is closed), stay down `down_for` seconds, start again."""
        self.stop(mode)
        if down_for:
            time.sleep(down_for)
        self.start()
        self.restarts += 1

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ databases

    def create_database(self, prefix: str = "latigo_chaos") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        return self.url(name)

    def drop_database(self, url: str) -> None:
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            admin.dispose()

    def destroy(self) -> None:
        """Stop the server (fast, else immediate) and remove its directory."""
        if self.running():
            try:
                self.stop("fast")
            except Exception:
                try:
                    self.stop("immediate")
                except Exception:
                    pass
        shutil.rmtree(self.directory, ignore_errors=True)


def _as_os_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *command] if os.geteuid() == 0 else command


def start_cluster() -> PostgresCluster:
    """initdb a fresh cluster on a free port and start it (see the module docstring)."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = find_bindir()
    assert bindir is not None
    directory = Path(tempfile.mkdtemp(prefix="latigo-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    directory.chmod(0o700)
    initdb = [str(bindir / "initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--no-sync", "--no-instructions"]
    result = subprocess.run(_as_os_user(initdb), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({result.returncode}): {result.stdout}{result.stderr}")
    last_error: Exception | None = None
    for _ in range(3):  # a port taken between free_port() and the server's bind: try another
        cluster = PostgresCluster(bindir, directory, free_port())
        try:
            cluster.start()
            return cluster
        except RuntimeError as exc:
            last_error = exc
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"the private PostgreSQL cluster did not start: {last_error}")


def serve_for_tests() -> Iterator[PostgresCluster]:
    """Body of a session fixture: skip (or fail under CI) when no cluster can be started here."""
    import pytest

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"private PostgreSQL cluster: {reason}; CI must run these tests")
        pytest.skip(f"private PostgreSQL cluster: {reason}")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()
