"""``alti-onnx serve``: the page on 127.0.0.1, the explanation it returns (the same routes as the API),
bounded and refused requests answered in one line while the server goes on, the CLI's options."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from browser import docs_screenshot, require_browser
from typer.testing import CliRunner

from alti_onnx import Explainer
from alti_onnx.cli.app import app
from alti_onnx.results.logit import LogitQuery
from alti_onnx.results.routes import RouteQuery
from alti_onnx.serve import MAX_BODY, MAX_TEXT, ExplainServer, ExplainService, parse_request

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = "the quick brown fox jumps"
ROUTES_DATA = re.compile(r'<script type="application/json" class="alti-routes-data">(.*?)</script>', re.S)


class Running:
    """A server of ``model`` answering on a thread; ``request`` speaks to it as a client would."""

    def __init__(self, model: Path, threshold: float = 0.04):
        self.explainer = Explainer(model)
        self.service = ExplainService(self.explainer, model.name, threshold)
        self.server = ExplainServer(self.service, 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(headers or {})
        connection.request(method, path, body=body, headers=sent)
        reply = connection.getresponse()
        content = reply.read().decode("utf-8")
        connection.close()
        kind = reply.getheader("Content-Type", "")
        return reply.status, json.loads(content) if kind.startswith("application/json") else content

    def explain(self, payload: object) -> tuple[int, dict]:
        status, found = self.request("POST", "/explain", json.dumps(payload).encode("utf-8"))
        assert isinstance(found, dict)
        return status, found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.explainer.close()


@pytest.fixture(scope="module")
def llama():
    running = Running(FIXTURES / "tiny-llama")
    yield running
    running.close()


def routes_of(page: str) -> dict:
    (found,) = ROUTES_DATA.findall(page)
    return json.loads(found)["routes"]


def test_the_server_listens_on_this_machine_only(llama):
    assert llama.server.server_address[0] == "127.0.0.1" and llama.server.port > 0
    assert llama.server.url == f"http://127.0.0.1:{llama.server.port}/"
    status, page = llama.request("GET", "/")
    assert status == 200 and isinstance(page, str)
    assert '<textarea id="text" maxlength="2000"' in page and 'id="threshold"' in page and "tiny-llama" in page
    assert 'value="0.04"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from elsewhere


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_an_explanation_holds_the_report_with_the_apis_routes(llama, threshold):
    payload = {"text": TEXT} if threshold is None else {"text": TEXT, "threshold": threshold}
    status, found = llama.explain(payload)
    assert status == 200 and set(found) == {"html"}
    page = found["html"]
    for section in ("attribution-section", "logit-section", "routes-section", "matrix-section"):
        assert f'id="{section}"' in page
    expected = llama.explainer.explain(TEXT, routes=RouteQuery(0.04 if threshold is None else threshold),
                                       logit=LogitQuery())
    routes = routes_of(page)
    assert routes["threshold"] == (0.04 if threshold is None else threshold)
    record = expected.routes.to_dict()
    assert len(routes["edges"]) == len(record["edges"]) > 0 and len(routes["nodes"]) == len(record["nodes"])
    for got, want in zip(routes["edges"], record["edges"]):
        assert {k: got[k] for k in ("layer", "kind", "head", "source", "target")} == \
               {k: want[k] for k in ("layer", "kind", "head", "source", "target")}
        assert got["weight"] == pytest.approx(want["weight"], abs=1e-6)
    assert page.count('class="alti-route-edge') == len(record["edges"])
    data = json.loads(re.search(r'<script type="application/json" id="alti-data">(.*?)</script>', page, re.S)[1])
    assert data["tokens"] == list(expected.tokens) and data["model"] == "tiny-llama"


def test_a_classifier_an_encoder_without_logits_and_an_encoder_decoder_are_served():
    for model, logit in (("tiny-bert-classifier", True), ("tiny-bert", False), ("tiny-t5-seq2seq", False)):
        running = Running(FIXTURES / model)
        try:
            assert running.service.logit is logit and running.service.routes
            status, found = running.explain({"text": TEXT, "threshold": 0.1})
            assert status == 200, found
            page = found["html"]
            assert ('id="logit-section"' in page) is logit and 'id="routes-section"' in page
            expected = running.explainer.explain(TEXT, routes=RouteQuery(0.1))
            if model != "tiny-t5-seq2seq":
                assert len(routes_of(page)["edges"]) == len(expected.routes.edges) > 0
            else:  # ALTI+ of the greedy output, and the decoder's and the encoder's routes
                data = json.loads(re.search(r'id="alti-data">(.*?)</script>', page, re.DOTALL)[1])
                assert "ALTI+ explanation" in page and data["source_share"] == pytest.approx(
                    [float(v) for v in expected.source_share], abs=1e-6)
                drawn = len(expected.routes.decoder.edges) + len(expected.routes.encoder.edges)
                assert page.count('class="alti-route-edge') == drawn > 0
        finally:
            running.close()


BAD = [
    ({"text": ""}, 400, "give a text"),
    ({"text": "   "}, 400, "give a text"),
    ({"threshold": 0.1}, 400, "give a text"),
    ({"text": 3}, 400, "give a text"),
    ({"text": "a" * (MAX_TEXT + 1)}, 400, f"the text has {MAX_TEXT + 1} characters; the most is {MAX_TEXT}"),
    ({"text": TEXT, "threshold": "x"}, 400, "the threshold is a number from 0 to 1"),
    ({"text": TEXT, "threshold": 2}, 400, "the threshold is a number from 0 to 1"),
    ({"text": TEXT, "threshold": -0.1}, 400, "the threshold is a number from 0 to 1"),
    ({"text": TEXT, "threshold": True}, 400, "the threshold is a number from 0 to 1"),
    ({"text": TEXT, "path": "/etc/passwd"}, 400, "unknown key 'path'"),
    (["a list"], 400, "a JSON object"),
    ({"text": "fox " * 500}, 400, "64"),  # longer than the model's 64 positions: the explainer's one line
]


@pytest.mark.parametrize("payload,status,words", BAD, ids=[str(k) for k in range(len(BAD))])
def test_a_bad_request_is_one_line_and_the_server_goes_on(llama, payload, status, words):
    got, found = llama.explain(payload)
    assert got == status and set(found) == {"error"}
    assert words in found["error"] and "\n" not in found["error"] and len(found["error"]) <= 500
    assert llama.request("GET", "/")[0] == 200


def test_not_a_number_and_bodies_that_are_not_json(llama):
    for body in (b'{"text": "a", "threshold": NaN}', b'{"text": "a", "threshold": Infinity}'):
        status, found = llama.request("POST", "/explain", body)
        assert status == 400 and found["error"].startswith("the threshold is a number from 0 to 1")
    status, found = llama.request("POST", "/explain", b'{"text": "a", "threshold": 1' + b"0" * 400 + b"}")
    assert status == 400 and found["error"].startswith("the threshold is a number from 0 to 1")
    for body in (b"text=a", b"\xff\xfe", b"", b"[" * 60_000 + b"]" * 4_000):
        status, found = llama.request("POST", "/explain", body)
        assert (status, found) == (400, {"error": "the request is not JSON"})
    status, found = llama.request("POST", "/explain", b'{"text": "a"}', headers={"Content-Type": "text/plain"})
    assert (status, found) == (415, {"error": "send the request as application/json"})


@pytest.mark.parametrize("length", [MAX_BODY + 1, 100 * 1024])
def test_a_body_over_64_kib_is_refused_unread(llama, length):
    """Answered (and closed) on the declared length alone: the server never waits for the body."""
    with socket.create_connection(("127.0.0.1", llama.server.port), timeout=10) as raw:
        raw.sendall(f"POST /explain HTTP/1.1\r\nHost: 127.0.0.1:{llama.server.port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode())
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 413 ")
    assert json.loads(body) == {"error": f"the request has {length} bytes; the most is {MAX_BODY}"}
    assert llama.request("GET", "/")[0] == 200


@pytest.mark.parametrize("path", ["/etc/passwd", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/explain",
                                  "/index.html", "//etc/passwd"])
def test_unknown_paths_are_not_found(llama, path):
    assert llama.request("GET", path) == (404, {"error": "not found"})


def test_a_post_elsewhere_is_not_found(llama):
    assert llama.request("POST", "/", b'{"text": "a"}') == (404, {"error": "not found"})


def test_a_foreign_host_is_refused(llama):
    """A page elsewhere that rebinds its name to 127.0.0.1 sends its own name as Host."""
    status, found = llama.request("GET", "/", headers={"Host": "attacker.example"})
    assert (status, found) == (400, {"error": "the Host header does not name this server"})
    assert llama.request("GET", "/", headers={"Host": f"localhost:{llama.server.port}"})[0] == 200


def test_an_unexpected_error_is_one_line_and_the_server_goes_on(llama):
    class Broken:
        def explain(self, *args, **kwargs):
            raise KeyError("a bug")

    working, llama.service.explainer = llama.service.explainer, Broken()
    try:
        assert llama.explain({"text": TEXT}) == (500, {"error": "internal error: KeyError"})
    finally:
        llama.service.explainer = working
    assert llama.explain({"text": TEXT})[0] == 200


def test_parse_request_takes_only_a_text_and_a_threshold():
    assert parse_request(b'{"text": "a b", "threshold": 0}') == ("a b", 0.0)
    assert parse_request(b'{"text": "a b", "threshold": null}') == ("a b", None)
    assert parse_request(json.dumps({"text": "é" * MAX_TEXT, "threshold": 1}).encode()) == ("é" * MAX_TEXT, 1.0)


def test_the_port_and_threshold_are_checked():
    from alti_onnx.errors import InputError

    with pytest.raises(InputError, match="the port is a number from 0 to 65535"):
        ExplainServer(ExplainService(object(), "x"), 70000)
    with pytest.raises(InputError, match="threshold"):
        ExplainService(object(), "x", threshold=1.5)


# ---- the command ----

@pytest.mark.parametrize("args,words", [
    (["serve", "{missing}"], "model not found: "),
    (["serve", str(FIXTURES / "tiny-llama"), "--port", "70000"], "the port is a number from 0 to 65535"),
    (["serve", str(FIXTURES / "tiny-llama"), "--port", "-1"], "the port is a number from 0 to 65535"),
    (["serve", str(FIXTURES / "tiny-llama"), "--threshold", "3"], "the routes' threshold is a weight from 0 to 1"),
])
def test_the_command_refuses_bad_options_in_one_line(args, words, tmp_path):
    args = [a.replace("{missing}", str(tmp_path / "no-such-model")) for a in args]
    result = CliRunner().invoke(app, args, env={"NO_COLOR": "1"})
    assert result.exit_code == 2, (result.output, result.exception)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and words in line


def test_the_command_serves_until_interrupted(monkeypatch):
    """The command announces the URL and stops at Ctrl-C (KeyboardInterrupt while serving) with 'stopped'."""
    import alti_onnx.serve as serve_module

    seen = {}

    def interrupted(self, poll_interval=0.5):
        seen["address"] = self.server_address
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_module.ExplainServer, "serve_forever", interrupted)
    result = CliRunner().invoke(app, ["serve", str(FIXTURES / "tiny-llama"), "--port", "0"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, (result.output, result.exception)
    port = seen["address"][1]
    assert seen["address"][0] == "127.0.0.1"
    assert result.stdout.splitlines() == [f"serving tiny-llama at http://127.0.0.1:{port}/ (Ctrl-C stops)", "stopped"]


# ---- in a browser ----

def test_the_page_explains_a_typed_text_in_a_browser(llama, tmp_path):
    require_browser()
    from browser import headless_chromium
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium(1100, 1000) as driver:
        driver.get(llama.server.url)
        driver.find_element("id", "text").send_keys(TEXT)
        threshold = driver.find_element("id", "threshold")
        threshold.clear()
        threshold.send_keys("0.1")
        driver.find_element("id", "explain").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
        frame = driver.find_element("id", "report")
        assert frame.is_displayed()
        driver.switch_to.frame(frame)
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.body.getAttribute('data-ready') === '1'"))
        expected = llama.explainer.explain(TEXT, routes=RouteQuery(0.1)).routes
        assert driver.find_element("css selector", "#routes-section h2").text == "Routes"
        assert len(driver.find_elements("css selector", ".alti-route-edge")) == len(expected.edges)
        assert driver.execute_script("return document.querySelector('.alti-routes').dataset.ready") == "1"
        driver.find_element("css selector", ".alti-route-prediction").click()
        panel = driver.find_element("css selector", ".alti-routes-panel").text
        assert "the prediction's node" in panel
        driver.execute_script("window.scrollTo(0, document.getElementById('logit-section').offsetTop - 8)")
        driver.switch_to.default_content()
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # an error is one line on the page, and the next text is explained again
        driver.find_element("id", "text").clear()
        driver.find_element("id", "text").send_keys("fox " * 100)
        driver.find_element("id", "explain").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
        error = driver.find_element("id", "error")
        assert error.is_displayed() and "\n" not in error.text and "64" in error.text
    docs_screenshot(shot, "serve.png")
