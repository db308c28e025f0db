"""``alti-onnx serve MODEL``: a page on this machine alone (127.0.0.1) that explains the texts typed
into it with a model loaded once: the report (attribution, logit decomposition, routes) in a frame.

Only a text and a threshold ever travel, both bounded; the request's size is checked before it is read.
The explainer runs one explanation at a time; an error in one request is a one-line answer, and the
server goes on. The Host header must name this server (a page elsewhere cannot reach it by DNS
rebinding) and a request must say it is JSON (a page elsewhere cannot send that without asking first).
"""

from __future__ import annotations

import html
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alti_onnx.decomposition.routes import THRESHOLD
from alti_onnx.errors import USER_ERRORS, InputError
from alti_onnx.report import style
from alti_onnx.results.logit import LogitQuery
from alti_onnx.results.routes import RouteQuery

#: The one address served: this machine only.
HOST = "127.0.0.1"
#: The largest request body read, in bytes.
MAX_BODY = 64 * 1024
#: The longest text explained, in characters.
MAX_TEXT = 2000
#: The keys a request may hold.
KEYS = ("text", "threshold")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; connect-src 'self'; frame-ancestors 'none'",
}


class RequestError(Exception):
    """A request refused: its HTTP status and one line for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> tuple[str, float | None]:
    """The text and threshold (None: the server's) of a request body; RequestError (400) otherwise."""
    try:
        found = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError(400, "the request is not JSON") from None
    if not isinstance(found, dict):
        raise RequestError(400, "the request is a JSON object with 'text' and 'threshold'")
    unknown = sorted(set(found) - set(KEYS))
    if unknown:
        raise RequestError(400, f"unknown key {unknown[0][:40]!r}: a request holds only 'text' and 'threshold'")
    text = found.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "give a text to explain")
    if len(text) > MAX_TEXT:
        raise RequestError(400, f"the text has {len(text)} characters; the most is {MAX_TEXT}")
    threshold = found.get("threshold")
    if threshold is None:
        return text, None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:  # NaN too
        raise RequestError(400, f"the threshold is a number from 0 to 1, got {str(threshold)[:40]!r}")
    return text, float(threshold)


class ExplainService:
    """The explainer (one explanation at a time) and what it is asked for each text: the routes, and
    the logit where the model has one to decompose."""

    def __init__(self, explainer: Any, model: str, threshold: float = THRESHOLD):
        RouteQuery(threshold)  # a bad default is refused before the server starts
        self.explainer = explainer
        self.model = model
        self.threshold = threshold
        self.routes = True  # every layout traces them (an encoder-decoder's through its cross-attention)
        self.logit = hasattr(explainer, "logit_decomposer") and _decomposes_logits(explainer)
        self.lock = threading.Lock()

    def report(self, text: str, threshold: float | None = None) -> str:
        """The report page of ``text``; a user-facing error is a RequestError (400) of one line."""
        extra: dict[str, Any] = {}
        if self.routes:
            extra["routes"] = RouteQuery(self.threshold if threshold is None else threshold)
        if self.logit:
            extra["logit"] = LogitQuery()
        try:
            with self.lock:
                explanation = self.explainer.explain(text, **extra)
            # a mean-pooled model's report draws one position: the first
            target = 0 if explanation.default_target == "mean" else None
            return explanation.report_html(model=self.model, target=target)
        except USER_ERRORS as exc:
            raise RequestError(400, _one_line(str(exc))) from None


def _decomposes_logits(explainer: Any) -> bool:
    """Whether the model has logits the decomposition reads (a model without them explains without)."""
    try:
        explainer.logit_decomposer()
    except InputError:
        return False
    return True


def _one_line(message: str) -> str:
    return " ".join(message.split())[:500] or "error"


def check_port(port: int) -> None:
    """A port to listen on: 1 to 65535, or 0 for any free one; InputError otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"the port is a number from 0 to 65535 (0: any free port), got {port!r}")


class ExplainServer(ThreadingHTTPServer):
    """The HTTP server of one ExplainService, on 127.0.0.1 only."""

    daemon_threads = True

    def __init__(self, service: ExplainService, port: int = 0):
        check_port(port)
        self.service = service
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            raise InputError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ExplainServer
    server_version = "alti-onnx"
    timeout = 30  # seconds a client may take to send its request: a stalled one does not hold a thread for good

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/":
            self._json(404, {"error": "not found"})
            return
        service = self.server.service
        self._send(200, page(service.model, service.threshold).encode("utf-8"), "text/html; charset=utf-8")

    def do_POST(self) -> None:
        self.close_connection = True  # a refused body is never read: the connection ends with the answer
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/explain":
            self._json(404, {"error": "not found"})
            return
        try:
            text, threshold = parse_request(self._body())
            self._json(200, {"html": self.server.service.report(text, threshold)})
        except RequestError as exc:
            self._json(exc.status, {"error": str(exc)})
        except Exception as exc:  # a bug: one line for the page, the traceback for the terminal
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error: {type(exc).__name__}"})

    def _body(self) -> bytes:
        """The request body, after its type and declared length are checked (nothing more is read)."""
        if self.headers.get_content_type() != "application/json":
            raise RequestError(415, "send the request as application/json")
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(400, "send the request with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "send the request with a Content-Length") from None
        if length < 0:
            raise RequestError(400, "send the request with a Content-Length")
        if length > MAX_BODY:
            raise RequestError(413, f"the request has {length} bytes; the most is {MAX_BODY}")
        return self.rfile.read(length)

    def _host_ok(self) -> bool:
        """Whether the Host header names this server (else answered 400)."""
        port = self.server.port
        if self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}"):
            return True
        self._json(400, {"error": "the Host header does not name this server"})
        return False

    def _json(self, status: int, payload: dict[str, str]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the terminal shows the URL and errors, not every request."""


def serve(model: str | Path, port: int = 8000, threshold: float = THRESHOLD,
          announce: Callable[[str], None] = print, **explainer_options: Any) -> None:
    """Load ``model`` once and serve its page on 127.0.0.1:``port`` until Ctrl-C."""
    from alti_onnx.explainer import Explainer

    RouteQuery(threshold)  # the options are checked before the model loads
    check_port(port)
    path = Path(model)
    with Explainer(path, **explainer_options) as explainer:
        name = path.parent.name if path.suffix == ".onnx" else path.name
        server = ExplainServer(ExplainService(explainer, name, threshold), port)
        announce(f"serving {name} at {server.url} (Ctrl-C stops)")
        main = threading.current_thread() is threading.main_thread()
        # Ctrl-C while serving is the way to stop, not an interruption (the console script's handler)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            announce("stopped")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            server.server_close()


def page(model: str, threshold: float) -> str:
    """The form page: a text, a threshold and the report of the last explanation in a sandboxed frame."""
    values = {"MODEL": html.escape(model), "THRESHOLD": f"{threshold:g}", "MAX": str(MAX_TEXT), "INK": style.INK,
              "MUTED": style.MUTED, "GRID": style.GRID, "ACCENT": style.ACCENT,
              "FONT": html.escape(style.css_font(style.FONT_SANS))}
    text = _PAGE
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    return text


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>alti-onnx · __MODEL__</title>
<style>
body { margin: 0; background: #f6f8fa; color: __INK__; font-family: __FONT__; font-size: 15px; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px; background: #fff; min-height: 100vh; }
h1 { font-size: 20px; margin: 0 0 10px; }
textarea { width: 100%; min-height: 84px; font: inherit; padding: 6px; border: 1px solid __GRID__; border-radius: 4px; }
.row { display: flex; gap: 14px; align-items: center; margin: 8px 0; font-size: 14px; }
input[type=number] { width: 80px; font: inherit; }
button { font: inherit; padding: 4px 16px; background: __ACCENT__; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
button[disabled] { opacity: 0.6; cursor: progress; }
#status { color: __MUTED__; }
#error { color: #b2182b; margin: 4px 0; }
iframe { width: 100%; height: 85vh; border: 1px solid __GRID__; border-radius: 4px; margin-top: 8px; }
[hidden] { display: none !important; }
</style>
</head>
<body data-state="idle">
<main>
<h1>alti-onnx · __MODEL__</h1>
<form id="explain-form">
<textarea id="text" maxlength="__MAX__" required placeholder="A text to explain (at most __MAX__ characters)"></textarea>
<div class="row">
<label>routes threshold <input type="number" id="threshold" min="0" max="1" step="0.01" value="__THRESHOLD__"></label>
<button type="submit" id="explain">Explain</button>
<span id="status" aria-live="polite"></span>
</div>
</form>
<p id="error" role="alert" hidden></p>
<iframe id="report" title="the explanation" sandbox="allow-scripts" hidden></iframe>
</main>
<script>
(function () {
  "use strict";
  var form = document.getElementById("explain-form"), button = document.getElementById("explain");
  var status = document.getElementById("status"), error = document.getElementById("error");
  var frame = document.getElementById("report");
  function fail(message) {
    error.textContent = message;
    error.hidden = false;
    document.body.dataset.state = "error";
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var value = document.getElementById("threshold").value;
    var body = {text: document.getElementById("text").value, threshold: value === "" ? null : Number(value)};
    button.disabled = true;
    error.hidden = true;
    status.textContent = "explaining\\u2026";
    document.body.dataset.state = "busy";
    fetch("/explain", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (reply) { return reply.json(); })
      .then(function (reply) {
        if (reply.error) { fail(reply.error); return; }
        frame.srcdoc = reply.html;
        frame.hidden = false;
        document.body.dataset.state = "done";
      })
      .catch(function (e) { fail("the server did not answer: " + e.message); })
      .then(function () { button.disabled = false; status.textContent = ""; });
  });
})();
</script>
</body>
</html>
"""
