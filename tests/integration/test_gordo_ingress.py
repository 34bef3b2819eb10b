"""The test ingress: one base URL, a real Gordo 6.0.4 server per project behind it.

The first tests check the proxy itself against a small stdlib upstream (no Gordo needed); the rest go
through it, over plain HTTP and with gordo-client 6.3.0, to real Gordo servers for `plant-a` and
`plant-b`, which both have a model `pump-1`, built differently."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.support.gordo_ingress import (
    NEXT_REVISION,
    PLANT_A,
    PLANT_B,
    GordoIngress,
    IngressProxy,
    build_project,
    gordo_ingress_fixture,  # noqa: F401 - registers the session fixture `gordo_ingress`
)
from tests.support.gordo_real import REVISION, TAGS, gordo_client_predict, oracle_frame, sensor_points, write_sensors
from tests.support.influxd import InfluxServer

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=10)


# --------------------------------------------------------------------------- the proxy alone


class Echo(BaseHTTPRequestHandler):
    """Answers with what it got: method, path, headers and body as JSON; `/chunked` answers in chunks."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"method": self.command, "path": self.path, "headers": self.headers.items(),
                             "body": body.decode("latin-1")}).encode()
        status = 201 if self.command == "POST" else 200
        self.send_response(status, "Made" if status == 201 else "OK")
        self.send_header("Content-Type", "application/json")
        self.send_header("revision", "42")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        if self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(answer), 7):
                piece = answer[start:start + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET


@pytest.fixture
def echo() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_proxy_keeps_method_path_query_headers_status_and_bodies(echo: str) -> None:
    with IngressProxy({"p": echo}) as proxy:
        body = bytes(range(256)) * 1000
        answer = requests.post(f"{proxy.base_url}/gordo/v0/p/m/anomaly/prediction?revision=17&format=json",
                               data=body, headers={"revision": "17", "X-Custom": "yes"}, timeout=10)
        assert answer.status_code == 201 and answer.reason == "Made"
        assert answer.headers["revision"] == "42"
        assert answer.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
        seen = answer.json()
        assert seen["method"] == "POST"
        assert seen["path"] == "/gordo/v0/p/m/anomaly/prediction?revision=17&format=json"
        headers = dict(seen["headers"])
        assert headers["revision"] == "17" and headers["X-Custom"] == "yes"
        assert headers["Host"] == f"127.0.0.1:{proxy.port}"  # the client's Host, as an ingress keeps it
        assert headers["X-Forwarded-For"] == "127.0.0.1"
        assert seen["body"].encode("latin-1") == body

        def pieces() -> Iterator[bytes]:
            yield b"first,"
            yield b"second"

        chunked = requests.put(f"{proxy.base_url}/gordo/v0/p/chunked", data=pieces(), timeout=10)
        assert chunked.status_code == 200 and chunked.json()["body"] == "first,second"
        assert chunked.headers.get("Transfer-Encoding") == "chunked"

        head = requests.head(f"{proxy.base_url}/gordo/v0/p/models", timeout=10)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0

        # keep-alive: several requests on one connection to the proxy
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        for n in range(3):
            connection.request("GET", f"/gordo/v0/p/{n}")
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["path"] == f"/gordo/v0/p/{n}"
        connection.close()


def test_proxy_answers_404_503_and_502_itself_and_routes_change_at_run_time(echo: str) -> None:
    with IngressProxy({"p": echo}) as proxy:
        for path in ("/gordo/v0/unknown/models", "/gordo/v0/", "/elsewhere", "/gordo/v0/pp/models"):
            answer = requests.get(proxy.base_url + path, timeout=10)
            assert answer.status_code == 404, path
            assert answer.headers["Content-Type"] == "text/html" and "<h1>404 Not Found</h1>" in answer.text

        proxy.set_upstream("p", None)  # known, no server: as a service without endpoints
        answer = requests.post(f"{proxy.base_url}/gordo/v0/p/models", data=b"x" * 100, timeout=10)
        assert answer.status_code == 503 and "Service Temporarily Unavailable" in answer.text

        with ThreadingHTTPServer(("127.0.0.1", 0), Echo) as closed:
            down = f"http://127.0.0.1:{closed.server_address[1]}"
        proxy.set_upstream("p", down)  # nothing listens there any more
        answer = requests.get(f"{proxy.base_url}/gordo/v0/p/models", timeout=10)
        assert answer.status_code == 502 and "<h1>502 Bad Gateway</h1>" in answer.text

        proxy.set_upstream("q", echo)
        proxy.set_upstream("p", echo)
        assert requests.get(f"{proxy.base_url}/gordo/v0/q/models", timeout=10).json()["path"] == "/gordo/v0/q/models"
        assert requests.get(f"{proxy.base_url}/gordo/v0/p/models", timeout=10).status_code == 200
        proxy.remove_upstream("q")
        assert requests.get(f"{proxy.base_url}/gordo/v0/q/models", timeout=10).status_code == 404
        assert [e.status for e in proxy.exchanges] == [404] * 4 + [503, 502, 200, 200, 404]


# --------------------------------------------------------------------------- real Gordo behind it


def anomaly_request(rows: int = 12) -> dict:
    index = [(T0 + i * STEP).isoformat() for i in range(rows)]
    frame = {tag: {ts: 0.5 + 0.02 * i * (-1) ** n + 0.1 * n for i, ts in enumerate(index)}
             for n, tag in enumerate(TAGS)}
    return {"X": frame, "y": frame}


def predict(ingress: GordoIngress, project: str, **params: str) -> requests.Response:
    return requests.post(ingress.model_url(project, "pump-1", "anomaly/prediction"), params=params,
                         json=anomaly_request(), timeout=120)


@pytest.mark.gordo_real
@pytest.mark.slow
def test_each_project_has_its_own_pump_1(gordo_ingress: GordoIngress) -> None:
    ingress = gordo_ingress
    assert ingress.projects == (PLANT_A, PLANT_B)
    listed = {p: requests.get(f"{ingress.project_url(p)}/models", timeout=30) for p in ingress.projects}
    assert {p: a.status_code for p, a in listed.items()} == {PLANT_A: 200, PLANT_B: 200}
    assert listed[PLANT_A].json()["models"] == ["pump-1"]
    assert sorted(listed[PLANT_B].json()["models"]) == ["pump-1", "pump-2"]
    assert {a.headers["revision"] for a in listed.values()} == {REVISION}

    metadata = {p: requests.get(ingress.model_url(p, "pump-1", "metadata"), timeout=30).json()
                for p in ingress.projects}
    a, b = (metadata[p]["metadata"] for p in (PLANT_A, PLANT_B))
    assert a["name"] == b["name"] == "pump-1"
    assert a["project_name"] == PLANT_A and b["project_name"] == PLANT_B
    assert a["dataset"]["train_start_date"] != b["dataset"]["train_start_date"]
    assert "MinMaxScaler" in json.dumps(a["model"]) and "StandardScaler" in json.dumps(b["model"])
    assert a["model"] != b["model"]

    answers = {p: predict(ingress, p) for p in ingress.projects}
    assert {p: r.status_code for p, r in answers.items()} == {PLANT_A: 200, PLANT_B: 200}, \
        {p: r.text[:300] for p, r in answers.items()}
    outputs = {p: r.json()["data"] for p, r in answers.items()}
    assert outputs[PLANT_A].keys() == outputs[PLANT_B].keys()
    assert outputs[PLANT_A]["model-output"] != outputs[PLANT_B]["model-output"]
    assert outputs[PLANT_A]["total-anomaly-scaled"] != outputs[PLANT_B]["total-anomaly-scaled"]

    # plant-a's model is not plant-b's: same request straight to the server gives the same answer
    direct = requests.post(ingress.servers[PLANT_A].model_url("pump-1", "anomaly/prediction"),
                           json=anomaly_request(), timeout=120)
    assert direct.json()["data"] == outputs[PLANT_A]

    unknown = requests.get(f"{ingress.base_url}/gordo/v0/plant-c/models", timeout=30)
    assert unknown.status_code == 404 and unknown.headers["Content-Type"].startswith("text/html")
    assert requests.get(ingress.model_url(PLANT_A, "pump-2", "metadata"), timeout=30).status_code == 404


@pytest.mark.gordo_real
@pytest.mark.slow
def test_revision_header_passes_and_a_restart_moves_the_revision(gordo_ingress: GordoIngress) -> None:
    ingress = gordo_ingress
    assert ingress.revision(PLANT_A) == REVISION
    by_header = requests.get(f"{ingress.project_url(PLANT_A)}/models", headers={"revision": REVISION}, timeout=30)
    assert by_header.status_code == 200 and by_header.headers["revision"] == REVISION
    wrong = requests.get(f"{ingress.project_url(PLANT_A)}/models", headers={"revision": "123"}, timeout=30)
    assert wrong.status_code == 410 and "123" in wrong.json()["error"]  # the header reached Gordo
    before = predict(ingress, PLANT_A, revision=REVISION)
    assert before.status_code == 200 and before.headers["revision"] == REVISION
    old_port = ingress.servers[PLANT_A].port
    plant_b_port = ingress.servers[PLANT_B].port

    next_collection = build_project(PLANT_A, NEXT_REVISION)
    try:
        server = ingress.restart_project(PLANT_A, next_collection)
        assert server.revision == NEXT_REVISION and server.port != old_port
        assert ingress.proxy.upstreams[PLANT_A] == server.base_url
        listed = requests.get(f"{ingress.project_url(PLANT_A)}/models", timeout=30)
        assert listed.status_code == 200 and listed.headers["revision"] == NEXT_REVISION
        assert listed.json()["models"] == ["pump-1"]
        metadata = requests.get(ingress.model_url(PLANT_A, "pump-1", "metadata"), timeout=30).json()
        assert metadata["revision"] == NEXT_REVISION
        assert metadata["metadata"]["dataset"]["train_start_date"].startswith("2026-01-03")
        assert '"n_components": 3' in json.dumps(metadata["metadata"]["model"])

        for old in (predict(ingress, PLANT_A, revision=REVISION),
                    requests.get(f"{ingress.project_url(PLANT_A)}/models", headers={"revision": REVISION}, timeout=30)):
            assert old.status_code == 410, old.text[:300]
            assert old.json()["error"] == f"Revision '{REVISION}' not found."
        after = predict(ingress, PLANT_A)
        assert after.status_code == 200 and after.headers["revision"] == NEXT_REVISION
        assert after.json()["data"]["model-output"] != before.json()["data"]["model-output"]  # PCA(3) now

        # plant-b did not move
        assert ingress.servers[PLANT_B].port == plant_b_port
        assert requests.get(f"{ingress.project_url(PLANT_B)}/models", timeout=30).headers["revision"] == REVISION
        # the old server is gone: its port answers nothing
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{old_port}/gordo/v0/{PLANT_A}/models", timeout=5)
    finally:
        ingress.restart_project(PLANT_A, build_project(PLANT_A))
    assert requests.get(f"{ingress.project_url(PLANT_A)}/models", timeout=30).headers["revision"] == REVISION
    gone = requests.get(f"{ingress.project_url(PLANT_A)}/models", params={"revision": NEXT_REVISION}, timeout=30)
    assert gone.status_code == 410


@pytest.fixture(scope="module")
def sensors(influxd: InfluxServer) -> str:
    database = f"gordo_ingress_{uuid.uuid4().hex[:8]}"
    write_sensors(influxd.url, database, sensor_points(TAGS, T0, T0 + timedelta(hours=4)))
    return database


@pytest.mark.gordo_real
@pytest.mark.slow
def test_gordo_client_predicts_each_project_through_the_ingress(gordo_ingress: GordoIngress, influxd: InfluxServer,
                                                                 sensors: str) -> None:
    ingress = gordo_ingress
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=3)
    frames: dict[str, Any] = {}
    for project in ingress.projects:
        target = ingress.client_target(project)
        assert (target.host, target.port) == (ingress.proxy.host, ingress.proxy.port)
        result = gordo_client_predict(target, influxd.url, sensors, "sensors", start, end, ["pump-1"])
        answer = result["pump-1"]
        assert answer["exception"] is None and answer["errors"] == [], (project, answer)
        frames[project] = oracle_frame(answer)
        assert set(frames[project]["model-output"].columns) == set(TAGS)
    a, b = frames[PLANT_A], frames[PLANT_B]
    assert list(a.index) == list(b.index)
    assert not a["model-output"].equals(b["model-output"])
    # the client spoke only to the ingress, and the ingress sent each project's requests to its own server
    routed = {(e.project, e.upstream) for e in ingress.proxy.exchanges if "anomaly/prediction" in e.path}
    assert {(p, ingress.servers[p].base_url) for p in ingress.projects} <= routed
