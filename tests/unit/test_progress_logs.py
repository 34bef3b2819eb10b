"""Progress bars and log lines on a real terminal (a pseudo-terminal): every log line stands on a line of its
own above the bar, masked as latigo's handler masks it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

from tests.support.processes import REPO, child_env

SCRIPT = textwrap.dedent("""
    import logging, sys, time
    from tqdm import tqdm
    from latigo.logs import logs_above_bars, setup_logging
    from latigo.secrets import register_secret

    setup_logging("INFO")
    register_secret("hunter2-very-secret")
    with {helper}, tqdm(total=30, desc="predicting", unit="task", file=sys.stderr, mininterval=0) as bar:
        for i in range(30):
            bar.update(1)
            if i % 7 == 3:
                logging.getLogger("latigo.test").info("line %d with password hunter2-very-secret", i)
            time.sleep(0.01)
""")


def screen(raw: str) -> list[str]:
    """What a terminal shows: carriage returns overwrite the line (tqdm's redraws), newlines end it; the
    cursor-up and erase sequences tqdm may send are dropped with the text they control."""
    lines, current = [], ""
    for part in raw.replace("\r\n", "\n").split("\n"):
        current = part.split("\r")[-1] if "\r" in part else part
        lines.append(current)
    return [line for line in lines if line.strip()]


def run_on_a_terminal(helper: str) -> str:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))  # 30 rows, 110 columns
    process = subprocess.Popen([sys.executable, "-c", SCRIPT.format(helper=helper)], cwd=REPO, env=child_env(),
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(60)
    os.close(controller)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_log_lines_stand_above_the_bar_and_stay_masked():
    shown = screen(run_on_a_terminal("logs_above_bars()"))
    logged = [line for line in shown if "line " in line]
    assert [line.split("INFO")[-1].split("latigo.test:")[-1].strip() for line in logged] == [
        f"line {i} with password ***" for i in (3, 10, 17, 24)]
    assert all("predicting" not in line and "|" not in line for line in logged)  # never drawn into the bar
    assert "hunter2-very-secret" not in "".join(shown)
    assert shown[-1].startswith("predicting: 100%")  # the bar, last, below the lines
