"""A fault-injecting HTTP reverse proxy for S3 tests (standard library only).

``FaultProxy`` listens on 127.0.0.1 and forwards every request unchanged (method, path, query,
headers including ``Host``, body) to an upstream such as moto's ``ThreadedMotoServer``. With
probability ``fault_rate`` per request it injects one fault chosen uniformly among ``kinds``:

* ``"slowdown"``: not forwarded; answered ``503`` with S3's ``SlowDown`` XML error.
* ``"internal"``: not forwarded; answered ``500`` with S3's ``InternalError`` XML error.
* ``"drop"``: with ``drop_mode="body"`` (default) the request IS forwarded and processed
  upstream, then the status line and headers go back with the full ``Content-Length`` but only
  half the body (nothing at all for a response without a body, e.g. ``HEAD`` or ``204``) and the
  connection is closed. With ``drop_mode="before"`` the request is read and the connection
  closed without forwarding it, so the server never sees it.

``schedule()`` forces faults on chosen requests, for deterministic tests.

What the s3fs -> aiobotocore -> aiohttp stack does with each (tests/testing/test_faultproxy.py
pins it):
503/500 are retried by botocore (``config_kwargs={"retries": ...}``); a truncated body of a parsed
response (ListObjectsV2, DeleteObjects, ...) becomes ``ConnectionClosedError``, retried by
botocore and by s3fs; a truncated GetObject body is retried only by s3fs (``fs.retries``,
default 5), else ``aiohttp.ClientPayloadError``; a hang-up with no response is resent once by
aiohttp itself for GET/HEAD/PUT/DELETE. A "body" drop of a request the server already applied
can make the resend fail for real: a conditional PUT then gets 412 (``FileExistsError``), a
DeleteBucket 404 (``FileNotFoundError``).

Example::

    with FaultProxy(moto_url, fault_rate=0.3, seed=1) as proxy:
        fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url=proxy.url)
        ...
        assert proxy.faults["slowdown"] > 0
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import socket
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Literal

FAULT_KINDS = ("slowdown", "internal", "drop")

_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}

# Hop-by-hop headers (RFC 9110 7.6.1) are not relayed; Expect is answered by this proxy itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


def error_body(code: str, message: str) -> bytes:
    """The S3 XML error document for an error code and message."""
    return f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy, port: int) -> None:
        self.proxy = proxy
        self.clients: set[socket.socket] = set()
        self.clients_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request, client_address) -> None:
        with self.clients_lock:
            self.clients.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.clients_lock:
            self.clients.discard(request)
        super().shutdown_request(request)

    def close_clients(self) -> None:
        """Hang up on every open client connection (keep-alive ones included)."""
        with self.clients_lock:
            clients, self.clients = list(self.clients), set()
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address) -> None:
        """Client hang-ups are expected (retries, injected drops): quiet; anything else: log."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; parse_request answers "Expect: 100-continue"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stall
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """No per-request logging."""

    def __getattr__(self, name: str) -> Callable[[], None]:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: every method is proxied.
        if name.startswith("do_"):
            return self._proxy
        raise AttributeError(name)

    # -- request -------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        """The request body: Content-Length, or de-chunked Transfer-Encoding: chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers are dropped
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        if self.headers.get("Connection", "").lower() == "close":
            self.close_connection = True
        kind = proxy._decide(self.command, self.path)
        if kind in _ERRORS:
            self._send_error(*_ERRORS[kind])
            return
        if kind == "drop" and proxy.drop_mode == "before":
            self._abort()
            return
        try:
            status, reason, headers, data = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            self._send_plain(502, "Bad Gateway", f"upstream error: {exc!r}".encode())
            return
        if kind == "drop":
            self._send_truncated(status, reason, headers, data)
            return
        self._send(status, reason, headers, data)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream; the response's status, reason, headers and body."""
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=proxy.timeout)
        try:
            conn.putrequest(
                self.command,
                proxy._base_path + self.path,
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)  # Host kept as sent: path-style S3, SigV4
            if body or self.command in ("PUT", "POST", "PATCH") or "Content-Length" in self.headers:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()  # empty for HEAD, 204 and 304
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            proxy._count_forwarded()
            return resp.status, resp.reason, headers, data
        finally:
            conn.close()

    # -- response ------------------------------------------------------------------------------

    def _has_body(self, status: int) -> bool:
        return self.command != "HEAD" and status >= 200 and status not in (204, 304)

    def _write_head(self, status: int, reason: str, headers: list[tuple[str, str]], n: int) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        keep_length = self.command == "HEAD" or status in (204, 304)
        lengths = [v for k, v in headers if k.lower() == "content-length"]
        if keep_length:
            if lengths:  # HEAD: the length of the body a GET would return
                self.send_header("Content-Length", lengths[0])
        else:
            self.send_header("Content-Length", str(n))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        body = data if self._has_body(status) else b""
        self._write_head(status, reason, headers, len(data))
        if body:
            self.wfile.write(body)
        self.wfile.flush()

    def _send_plain(self, status: int, reason: str, data: bytes) -> None:
        self._send(status, reason, [("Content-Type", "text/plain")], data)

    def _send_error(self, status: int, reason: str, code: str, message: str) -> None:
        body = error_body(code, message)
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        self._send(status, reason, headers, body)

    def _send_truncated(
        self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes
    ) -> None:
        """Headers with the full Content-Length, half the body, then hang up."""
        if not self._has_body(status) or not data:
            self._abort()
            return
        self._write_head(status, reason, headers, len(data))
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self._abort()

    def _abort(self) -> None:
        """Close the client connection now, whatever was sent so far."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FaultProxy:
    """A threaded reverse proxy to ``upstream`` that injects S3-style faults at random.

    ``fault_rate`` (mutable) is the probability per request of a fault, drawn from a seeded
    ``random.Random``; ``kinds`` are the faults to choose from, uniformly; ``methods``, when
    given, limits faults to those HTTP methods; ``drop_mode`` is ``"body"`` (forward, then send
    half the response body) or ``"before"`` (close without forwarding); ``timeout`` bounds each
    upstream request. Counters: ``requests`` (received), ``forwarded`` (answered upstream),
    ``faults`` (kind -> count) and ``requests_by_method()``; ``history`` lists ``(method, path,
    fault kind or None)`` for every request. ``reset_counts()`` replaces ``faults`` and
    ``history`` with fresh objects.
    """

    def __init__(
        self,
        upstream: str,
        fault_rate: float = 0.0,
        seed: int = 0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        *,
        drop_mode: Literal["body", "before"] = "body",
        methods: tuple[str, ...] | None = None,
        port: int = 0,
        timeout: float = 60.0,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}: {kinds!r}")
        if drop_mode not in ("body", "before"):
            raise ValueError(f"drop_mode must be 'body' or 'before': {drop_mode!r}")
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be an http:// URL: {upstream!r}")
        self.upstream = upstream
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._base_path = parsed.path.rstrip("/")
        self.fault_rate = fault_rate
        self.kinds = tuple(kinds)
        self.drop_mode = drop_mode
        self.methods = tuple(m.upper() for m in methods) if methods else None
        self.timeout = timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requested_port = port
        self._scheduled: list[list] = []  # [kind, remaining, method, path substring]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset_counts()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._server = _Server(self, self._requested_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FaultProxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_clients()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port listened on (after ``start()``)."""
        if self._server is None:
            raise RuntimeError("FaultProxy not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The proxy's base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    # -- counters ------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Zero every counter, clear the history and any scheduled faults."""
        with self._lock:
            self._scheduled = []
            self.requests = 0
            self.forwarded = 0
            self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
            self.history: list[tuple[str, str, str | None]] = []
            self._by_method: Counter[str] = Counter()

    def requests_by_method(self) -> dict[str, int]:
        """Requests received so far, by HTTP method."""
        with self._lock:
            return dict(self._by_method)

    @property
    def total_faults(self) -> int:
        """Faults injected so far, of every kind."""
        with self._lock:
            return sum(self.faults.values())

    def schedule(
        self, kind: str, count: int = 1, method: str | None = None, path_contains: str = ""
    ) -> None:
        """Force ``kind`` on the next ``count`` requests matching ``method`` and a path substring.

        Scheduled faults apply whatever ``fault_rate`` is, before any random draw; they are
        counted in ``faults`` like random ones.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        with self._lock:
            self._scheduled.append([kind, count, method.upper() if method else None, path_contains])

    def _decide(self, method: str, path: str) -> str | None:
        """Count a request and pick its fault: a scheduled one, else a random draw."""
        with self._lock:
            self.requests += 1
            self._by_method[method] += 1
            kind = None
            for entry in self._scheduled:
                if entry[2] in (None, method) and entry[3] in path:
                    kind = entry[0]
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._scheduled.remove(entry)
                    break
            eligible = self.methods is None or method in self.methods
            if kind is None and eligible and self._rng.random() < self.fault_rate:
                kind = self._rng.choice(self.kinds)
            if kind is not None:
                self.faults[kind] += 1
            self.history.append((method, path, kind))
            return kind

    def _count_forwarded(self) -> None:
        with self._lock:
            self.forwarded += 1
