"""A deliberately fast OpenAI look-alike for the gateway benchmark (bench/run.py).

uvloop + httptools, one asyncio Protocol per connection, answers pre-serialised: it does no JSON
work per request beyond splicing a counter into the create answer. It is not a conformance stand-in
(tests/standins/openai_like.py is): it only has to be much faster than the gateway so that the
gateway is what the benchmark measures.

    GET  /v1/fine_tuning/jobs   a ~16 KB list of 20 jobs (the same bytes every time)
    POST /v1/fine_tuning/jobs   a job with a fresh id (the body is read and dropped)
    POST /v1/files              a file object; the body (any size, chunked or not) is counted, not kept
    GET  /healthz               {"status":"ok"}

    python bench/upstream.py --port 9001 [--procs 1]

Prints ``ready <port>`` on stdout once listening. ``--procs N`` forks N processes sharing the port
with SO_REUSEPORT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time

import httptools
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
    uvloop = None

JOB_FIELDS = {
    "object": "fine_tuning.job", "model": "gpt-4o-mini-2024-07-18", "created_at": 1732500000,
    "finished_at": None, "fine_tuned_model": None, "organization_id": "org-benchmark0000000000000",
    "result_files": [], "status": "validating_files", "validation_file": "file-validation0000000000000",
    "training_file": "file-training00000000000000000",
    "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
    "trained_tokens": None, "error": None, "seed": 42, "estimated_finish": None, "integrations": [],
    "metadata": {"team": "search-ranking", "experiment": "bench-2024-11", "owner": "perf@example.com"},
    "method": {"type": "supervised", "supervised": {"hyperparameters": {
        "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}}},
    "user_provided_suffix": "bench-run",
}


def _job(job_id: str, i: int = 0) -> dict:
    job = {"id": job_id, **JOB_FIELDS}
    job["created_at"] = JOB_FIELDS["created_at"] - i * 60
    job["metadata"] = {**JOB_FIELDS["metadata"], "dataset": f"s3://bench/data/{i:04d}.jsonl"}
    return job


LIST_BODY = orjson.dumps({"object": "list", "data": [_job(f"ftjob-bench{i:020d}", i) for i in range(20)],
                          "has_more": True})
_created = orjson.dumps(_job("ftjob-CREATEDID"))
CREATE_HEAD, CREATE_TAIL = _created.split(b"CREATEDID")
FILE_TEMPLATE = (b'{"object":"file","id":"file-up%d","bytes":%d,"created_at":1732500000,'
                 b'"filename":"train.jsonl","purpose":"fine-tune","status":"processed"}')


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nx-request-id: req_bench\r\n\r\n" + body)


LIST_RESPONSE = _response(b"200 OK", LIST_BODY)
HEALTH_RESPONSE = _response(b"200 OK", b'{"status":"ok"}')
NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error",'
                                         b'"param":null,"code":null}}')
BAD_REQUEST = _response(b"400 Bad Request", b'{"error":{"message":"bad request"}}')


class Http(asyncio.Protocol):
    __slots__ = ("transport", "parser", "url", "body_bytes")

    counter = [0]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body_bytes = 0

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if path == b"/v1/fine_tuning/jobs":
            if method == b"GET":
                out = LIST_RESPONSE
            else:
                self.counter[0] += 1
                out = _response(b"200 OK", CREATE_HEAD + b"%024d" % self.counter[0] + CREATE_TAIL)
        elif path == b"/v1/files" and method == b"POST":
            self.counter[0] += 1
            out = _response(b"200 OK", FILE_TEMPLATE % (self.counter[0], self.body_bytes))
        elif path == b"/healthz":
            out = HEALTH_RESPONSE
        else:
            out = NOT_FOUND
        self.transport.write(out)
        if not self.parser.should_keep_alive():
            self.transport.close()


def serve(sock: socket.socket) -> None:
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Http, sock=sock, backlog=4096))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


def _socket(port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--procs", type=int, default=1)
    args = ap.parse_args()
    socks = [_socket(args.port, args.procs > 1) for _ in range(args.procs)]
    children = []
    for sock in socks[1:]:
        pid = os.fork()
        if pid == 0:
            serve(sock)
            os._exit(0)
        children.append(pid)
    print(f"ready {args.port} list_body={len(LIST_BODY)}", flush=True)
    try:
        serve(socks[0])
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        for pid in children:
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
                time.sleep(0.02)
    sys.exit(0)


if __name__ == "__main__":
    main()
