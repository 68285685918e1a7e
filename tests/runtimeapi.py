"""A loopback stand-in for the AWS Lambda Runtime API, for running the built zip under the
real runtime client (awslambdaric) in tests.

The Runtime API is a small HTTP interface the runtime client polls: ``GET
/2018-06-01/runtime/invocation/next`` hands it the next event (headers carry the request id
and deadline), ``POST .../invocation/{id}/response`` and ``.../invocation/{id}/error`` take the
result, ``POST .../init/error`` reports a handler that could not be loaded. ``invoke`` queues
an event and waits for what the runtime posts back. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
REMAINING_MS = 900_000


@dataclass
class Posted:
    kind: str  # "response", "error" or "init_error"
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class RuntimeApi:
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.posted: dict[str, queue.Queue[Posted]] = {}
        self.init_errors: queue.Queue[Posted] = queue.Queue()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and curl's Expect: 100-continue

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:  # the runtime was stopped mid-request (its poll for next)
                    self.close_connection = True

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(404)
                    return
                try:
                    request_id, event = api.events.get(timeout=300)
                except queue.Empty:
                    self._reply(500)
                    return
                deadline = int(time.time() * 1000) + REMAINING_MS
                self._reply(
                    200,
                    event,
                    {
                        "Content-Type": "application/json",
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline),
                        "Lambda-Runtime-Invoked-Function-Arn": (
                            "arn:aws:lambda:us-east-1:123456789012:function:redshift-lambda"
                        ),
                        "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                    },
                )

            def do_POST(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items()}
                parts = self.path[len(PREFIX) + 1 :].split("/")
                if parts == ["init", "error"]:
                    api.init_errors.put(Posted("init_error", body, headers))
                elif len(parts) == 3 and parts[0] == "invocation" and parts[1] in api.posted:
                    if parts[2] not in ("response", "error"):
                        self._reply(404)
                        return
                    api.posted[parts[1]].put(Posted(parts[2], body, headers))
                else:
                    self._reply(404)
                    return
                self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> RuntimeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def invoke(self, event: Any, timeout_s: float = 300) -> Posted:
        """Hand the runtime one event; what it posts back (response or error)."""
        request_id = str(uuid.uuid4())
        self.posted[request_id] = queue.Queue()
        self.events.put((request_id, json.dumps(event).encode("utf-8")))
        try:
            return self.posted[request_id].get(timeout=timeout_s)
        except queue.Empty:
            try:
                init = self.init_errors.get_nowait()
            except queue.Empty:
                raise AssertionError(f"the runtime posted nothing in {timeout_s} s") from None
            raise AssertionError(f"the handler could not be loaded: {init.body!r}") from None
        finally:
            del self.posted[request_id]
