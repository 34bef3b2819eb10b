"""The built distribution carries what an installed latigo needs at run time."""

import subprocess
import sys
import zipfile

import pytest

from tests.support.processes import REPO

pytestmark = pytest.mark.slow


def test_the_wheel_ships_the_migrations_and_the_version(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("latigo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"latigo/VERSION", "latigo/migrations/env.py", "latigo/migrations/script.py.mako"} <= names
    versions = {n for n in names if n.startswith("latigo/migrations/versions/") and n.endswith(".py")}
    in_checkout = {f"latigo/migrations/versions/{p.name}" for p in (REPO / "alembic" / "versions").glob("*.py")}
    assert versions == in_checkout
    assert not any(n.startswith("tests/") or n.startswith("benchmarks/") for n in names)
