"""`latigo web` against SQLite and PostgreSQL databases filled through latigo's own lifecycle: the numbers
it shows, the order of the models, escaping, the token rules and the read-only session."""

from __future__ import annotations

import html
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from latigo.errors import ConfigError
from latigo.lifecycle import TaskLifecycle
from latigo.settings import DatabaseSettings
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange
from latigo.web.queries import read_only_engine
from latigo.web.server import WebApp, WebServer, make_server
from tests.support.processes import REPO, child_env, write_config

pytestmark = pytest.mark.integration

STEP = timedelta(minutes=10)
SCRIPT = "<script>alert(1)</script>"
SCRIPT_TAG = "<img src=x onerror=alert(2)>"
TOKEN = "s3cret-token-for-the-web-test-0123"


@dataclass
class Filled:
    """What the test database holds, as the page should show it."""

    now: datetime
    backlog: int = 3
    done: int = 30
    failed: int = 6
    reasons: tuple[tuple[str, int], ...] = (("permanent", 3), ("dead_letter", 1), ("no_data", 1), ("transient", 1))
    executors: tuple[str, ...] = ("exec-a", "exec-b")
    order: tuple[str, ...] = ("pump-hot", SCRIPT, "pump-broken", "pump-queued", "pump-calm")
    confidence: tuple[tuple[str, str], ...] = (("pump-hot", "2.50"), (SCRIPT, "1.75"), ("pump-calm", "0.40"))
    tags: tuple[str, ...] = ("A-temp", "B-flow", "C-pressure")
    script_tags: tuple[str, ...] = ("S-1", SCRIPT_TAG)

    @property
    def last_window(self) -> str:
        return self.now.strftime("%Y-%m-%d %H:%M")


def _frame(model: str, window: TimeRange, total: float, tags: tuple[str, ...]) -> PredictionFrame:
    ts = window.start
    rows = [PredictionRow("total-anomaly-confidence", "total-anomaly-confidence", ts, total),
            PredictionRow("total-anomaly-scaled", "total-anomaly-scaled", ts, total * 0.8)]
    for index, tag in enumerate(tags):
        rows += [PredictionRow("tag-anomaly-scaled", tag, ts, total * (0.5 + 0.2 * index)),
                 PredictionRow("anomaly-confidence", tag, ts, total * (0.6 + 0.3 * index)),
                 PredictionRow("model-output", tag, ts, 10.0 + index)]
    return PredictionFrame(model, rows)


def fill(engine: sa.Engine) -> Filled:
    """Through TaskLifecycle, as the scheduler and the executors would: done windows with anomaly outputs
    for three models (one named like a script), failures of four reasons, three queued tasks."""
    utc = datetime.now(timezone.utc)
    now = utc - (utc - datetime(1970, 1, 1, tzinfo=timezone.utc)) % STEP
    filled = Filled(now)
    lifecycle = TaskLifecycle(engine)

    def window(back: int) -> TimeRange:  # back=1: the newest window, ending at `now`
        return TimeRange(now - back * STEP, now - (back - 1) * STEP)

    def run(model: str, back: int, executor: str, total: float | None, tags: tuple[str, ...] = (),
            failure: str | None = None) -> None:
        task = Task(model, window(back))
        with lifecycle.transaction() as c:
            lifecycle.enqueue(c, [task])
            lifecycle.start(c, task, executor)
        if failure is not None:
            with lifecycle.transaction() as c:
                if failure.startswith("dead_letter"):
                    lifecycle.dead_letter(c, "test", task.task_id, task.to_json().encode(), failure)
                lifecycle.fail(c, task, failure, 12)
            return
        frame = _frame(model, task.window, total, tags)
        lifecycle.predictions.ready_for(frame)
        with lifecycle.transaction() as c:
            lifecycle.finish(c, task, frame, 40)

    for back in range(18, 0, -1):  # 3 hours; the newest value 2.5
        run("pump-hot", back, "exec-a", 0.3 + 0.01 * back if back > 1 else 2.5, filled.tags)
    for back in range(6, 0, -1):
        run(SCRIPT, back, "exec-b", 0.5 if back > 1 else 1.75, filled.script_tags)
        run("pump-calm", back, "exec-a", 3.0 if back == 4 else 0.4, filled.tags)  # above 1 earlier, not now
    failures = ["permanent: Gordo said 400: Unexpected features", "transient: timeout (after 5 attempts)",
                "no_data: no sensor values in the window", "dead_letter: the ledger cannot record it",
                "permanent: the predictions cannot be stored"]
    failures.append(failures[0])  # the newest window fails too
    for back, failure in enumerate(failures, start=1):
        run("pump-broken", len(failures) + 1 - back, "exec-b", None, failure=failure)
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, [Task("pump-queued", window(back)) for back in (3, 2, 1)])
    return filled


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture
def filled(engine) -> Filled:
    return fill(engine)


@pytest.fixture
def web_engine(db_url: str) -> Iterator[sa.Engine]:
    engine = read_only_engine(DatabaseSettings(url=db_url))
    yield engine
    engine.dispose()


def serve(engine: sa.Engine, token: str | None = None) -> WebServer:
    server = make_server(engine, "127.0.0.1", 0, token=token, database="test database")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def web(web_engine) -> Iterator[WebServer]:
    server = serve(web_engine)
    yield server
    server.shutdown()
    server.server_close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def by_id(page: str, key: str) -> str:
    match = re.search(rf'id="{re.escape(key)}">([^<]*)<', page)
    assert match, f"no element with id {key}"
    return html.unescape(match.group(1))


def model_order(page: str) -> list[str]:
    return [html.unescape(name) for name in re.findall(r'<tr class="model[^"]*" data-model="([^"]*)"', page)]


def model_row(page: str, name: str) -> str:
    start = page.index(f'data-model="{html.escape(name, quote=True)}"')
    return page[start:page.index("</tr>", start)]


# ---------------------------------------------------------------------------------------------- the page

def test_overview_shows_the_pipeline_and_the_models(filled, web):
    status, page, headers = get(web.url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="30">' in page
    assert by_id(page, "backlog") == str(filled.backlog)
    assert re.fullmatch(r"\d+s", by_id(page, "oldest-queued")), by_id(page, "oldest-queued")
    assert by_id(page, "throughput") == str(filled.done)
    assert by_id(page, "failed-24h") == str(filled.failed)
    assert by_id(page, "executors-seen") == str(len(filled.executors))
    assert by_id(page, "models-above") == "2"
    reasons = dict(re.findall(r'<tr data-reason="([^"]+)"><td><b>[^<]*</b></td><td class="num count">(\d+)</td>',
                              page))
    assert {reason: int(count) for reason, count in reasons.items()} == dict(filled.reasons)
    assert "Gordo said 400: Unexpected features" in page  # an example of the reason
    assert re.findall(r'<tr data-executor="([^"]+)">', page) == list(filled.executors)

    assert model_order(page) == list(filled.order)  # above the threshold first, highest first
    for name, value in filled.confidence:
        row = model_row(page, name)
        assert f">{value}</span>" in row
        assert ('class="conf above"' in row) == (float(value) > 1)
        assert filled.last_window in row
        assert '<svg class="spark"' in row
    assert "badge s-failed" in model_row(page, "pump-broken")
    assert "badge s-queued" in model_row(page, "pump-queued")
    assert ">never<" in model_row(page, "pump-queued")


def test_names_are_escaped_everywhere(filled, web):
    _status, page, _headers = get(web.url)
    assert SCRIPT not in page and "<script" not in page
    assert html.escape(SCRIPT) in page
    status, detail, headers = get(web.url + "models/" + quote(SCRIPT, safe=""))
    assert status == 200
    assert "<script" not in detail and "<img" not in detail
    assert html.escape(SCRIPT) in detail and html.escape(SCRIPT_TAG, quote=True) in detail
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script runs at all
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def shown_range(page: str) -> str:
    return html.unescape(re.search(r'<span id="shown">([^<]*)</span>', page).group(1))


def links(page: str, rel: str) -> list[str]:
    return [html.unescape(href) for href in re.findall(rf'<a rel="{rel}" href="([^"]*)"', page)]


def test_search_narrows_by_model_or_project_name_ignoring_case(filled, web):
    _status, page, _ = get(web.url + "?q=PUMP-")
    assert model_order(page) == ["pump-hot", "pump-broken", "pump-queued", "pump-calm"]
    assert shown_range(page) == "1–4 of 4"
    assert 'value="PUMP-"' in page  # the search box keeps the text
    assert model_order(get(web.url + "?q=ot")[1]) == ["pump-hot"]
    assert model_order(get(web.url + "?q=DEFAULT")[1]) == list(filled.order)  # the project's name matches all
    _status, none, _ = get(web.url + "?q=no-such-thing")
    assert model_order(none) == [] and 'id="no-match"' in none


def test_state_filters_are_links_with_counts(filled, web):
    _status, page, _ = get(web.url)
    assert by_id(page, "state-all") == "all 5"
    assert html.unescape(re.search(r'id="state-anomalous" href="([^"]*)">above threshold 2<', page).group(1)) \
        == "/?state=anomalous"
    assert 'id="state-late" href="/?state=late">late 2<' in page  # pump-broken, pump-queued: nothing done
    assert 'id="state-failing" href="/?state=failing">failing 1<' in page
    assert model_order(get(web.url + "?state=anomalous")[1]) == ["pump-hot", SCRIPT]
    assert model_order(get(web.url + "?state=late")[1]) == ["pump-broken", "pump-queued"]
    assert model_order(get(web.url + "?state=failing")[1]) == ["pump-broken"]
    combined = get(web.url + "?state=late&q=queued")[1]
    assert model_order(combined) == ["pump-queued"]
    assert 'id="state-late">late 1<' in combined  # the counts are of the search
    assert model_order(get(web.url + "?state=bogus")[1]) == list(filled.order)  # unknown: ignored


def test_pages_say_how_many_and_link_to_each_other(filled, web_engine):
    app = WebApp(web_engine, database="test database", page_size=2)
    pages = []
    target = "/"
    while target:
        response = app.respond("GET", target, {"Host": "127.0.0.1"})
        assert response.status == 200
        page = response.body.decode()
        pages.append((model_order(page), shown_range(page)))
        following = links(page, "next")
        target = following[0] if following else ""
    assert pages == [(list(filled.order[:2]), "1–2 of 5"), (list(filled.order[2:4]), "3–4 of 5"),
                     (list(filled.order[4:]), "5–5 of 5")]
    late = app.respond("GET", "/?state=late&page=9", {"Host": "127.0.0.1"}).body.decode()
    assert model_order(late) == ["pump-broken", "pump-queued"]  # past the end: the last page
    assert links(late, "next") == [] and links(late, "prev") == []
    second = app.respond("GET", "/?q=p&page=2", {"Host": "127.0.0.1"}).body.decode()  # all five have a p
    assert links(second, "prev") == ["/?q=p"] and links(second, "next") == ["/?q=p&page=3"]


def test_hostile_search_text_stays_escaped_in_the_box_and_every_link(filled, web):
    _status, page, _ = get(web.url + "?q=" + quote(SCRIPT) + "&state=late")
    assert "<script" not in page and "<img" not in page
    assert f'value="{html.escape(SCRIPT, quote=True)}"' in page
    assert 'href="/?q=%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in page  # state "all": the search kept
    _status, found, _ = get(web.url + "?q=" + quote("<SCRIPT>"))
    assert model_order(found) == [SCRIPT]
    quote_breaker = '" autofocus onfocus="alert(3)'
    _status, page, _ = get(web.url + "?q=" + quote(quote_breaker))
    assert 'onfocus="alert' not in page and html.escape(quote_breaker, quote=True) in page


def test_model_page_draws_one_line_per_tag_and_lists_its_tasks(filled, web):
    status, page, _ = get(web.url + "models/pump-hot")
    assert status == 200
    chart = page[page.index('<svg class="tag-chart"'):]
    chart = chart[:chart.index("</svg>")]
    assert re.findall(r'<polyline class="line" data-tag="([^"]+)"', chart) == list(filled.tags)
    assert all(len(points.split()) == 18 for points in re.findall(r' points="([^"]*)"', chart))
    assert "time (UTC)" in chart
    assert 'class="threshold"' in chart  # anomaly-confidence is drawn, with its threshold 1
    assert by_id(page, "confidence") == "2.50"
    assert by_id(page, "newest-state") == "done"
    assert page.count("badge s-done") == 18
    scaled = get(web.url + "models/pump-hot?output=tag-anomaly-scaled&hours=6")[1]
    chart = scaled[scaled.index('<svg class="tag-chart"'):]
    assert len(re.findall(r"<polyline ", chart[:chart.index("</svg>")])) == len(filled.tags)
    assert 'class="threshold"' not in chart[:chart.index("</svg>")]
    assert get(web.url + "models/no-such-model")[0] == 404
    assert get(web.url + "nothing-here")[0] == 404


def test_web_session_is_read_only(filled, web_engine, db_url):
    with pytest.raises(sa.exc.DBAPIError, match="read-only|readonly"):
        with web_engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO series (model, output, tag) VALUES ('x', 'y', 'z')"))
    if db_url.startswith("sqlite"):
        missing = read_only_engine(DatabaseSettings(url=db_url + "-missing"))
        with pytest.raises(sa.exc.OperationalError):
            missing.connect()
        assert not Path(db_url.removeprefix("sqlite:///") + "-missing").exists()  # not created empty


def test_non_get_requests_are_refused(filled, web):
    request = urllib.request.Request(web.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 405


# ---------------------------------------------------------------------------------------------- the token

def test_a_non_loopback_bind_needs_a_token(web_engine):
    with pytest.raises(ConfigError, match="not a loopback address"):
        make_server(web_engine, "0.0.0.0", 0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_command_refuses_a_non_loopback_bind_without_a_token(db_url, tmp_path):
    config = write_config(tmp_path / "c.yaml", database={"url": db_url})
    result = subprocess.run([sys.executable, "-m", "latigo", "--config", str(config), "web", "--host", "0.0.0.0",
                             "--port", "0"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "not a loopback address" in result.stderr and "--token-file" in result.stderr


def test_with_a_token_every_request_must_carry_it(filled, web_engine):
    server = serve(web_engine, token=TOKEN)
    try:
        status, page, headers = get(server.url)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in page
        assert get(server.url + "?token=wrong-" + TOKEN)[0] == 401
        assert get(server.url, {"Authorization": "Bearer " + TOKEN[:-1]})[0] == 401
        status, page, headers = get(server.url + "?token=" + TOKEN)
        assert status == 200 and by_id(page, "backlog") == str(filled.backlog)
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(server.url + "models/pump-hot", {"Authorization": "Bearer " + TOKEN})[0] == 200
        assert get(server.url + "models/pump-hot", {"Cookie": cookie.split(";")[0]})[0] == 200
        assert get(server.url + "models/pump-hot", {"Cookie": "latigo_web_token=nope"})[0] == 401
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_token_only_loopback_host_names_are_served(filled, web):
    assert get(web.url, {"Host": "evil.example:8080"})[0] == 403  # DNS rebinding
    assert get(web.url, {"Host": "localhost"})[0] == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_command_serves_with_a_token_and_never_logs_it(filled, db_url, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(tmp_path / "c.yaml", database={"url": db_url}, logging={"level": "DEBUG"})
    process = subprocess.Popen([sys.executable, "-m", "latigo", "--config", str(config), "web", "--port", "0",
                                "--token-file", str(token_file)], cwd=REPO, env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = ""
        while not (match := re.search(r"serving (http://127\.0\.0\.1:\d+/)", first)):
            line = process.stdout.readline()
            assert line, first
            first += line
        url = match.group(1)
        assert get(url)[0] == 401
        assert get(url + "?token=" + TOKEN)[0] == 200
        assert get(url + "models/pump-hot?token=" + TOKEN)[0] == 200
        time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    log = first + output
    assert "GET /models/pump-hot 200" in log  # requests are logged (at DEBUG) ...
    assert TOKEN not in log  # ... without the token
