"""A loopback TCP proxy that adds a fixed latency to every request and counts the HTTP requests.

SeaweedFS on loopback answers in ~1 ms, real S3 in ~20-50 ms to first byte, so a cost per request that
is invisible locally dominates at scale. Put this proxy between a client and a local S3 server (point
the client's endpoint at `proxy.endpoint`): every client->server chunk is held `delay_s` from its
arrival (so pipelined chunks do not add up; a request costs one delay), answers pass straight back.
It also parses the HTTP/1.1 requests going through (request line, headers, Content-Length or chunked
bodies) and counts them by kind: LIST, HEAD, GET, GET-range, PUT, POST, DELETE, so a test or benchmark
can count requests rather than time them on a shared machine.

    with LatencyProxy("http://127.0.0.1:8333", delay_s=0.02) as proxy:   # doctest: +SKIP
        ...  # clients use proxy.endpoint
        proxy.counts()  # {"LIST": 3, "GET": 12, ...}

Command line (runs until Ctrl-C, then prints the counts):

    python -m pipeline.devtools.latency_proxy --target http://127.0.0.1:8333 --delay-ms 20 --port 8334
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
import time
from collections import Counter
from types import TracebackType
from urllib.parse import urlsplit

HOST = "127.0.0.1"


def request_kind(method: str, target: str, headers: dict[str, str]) -> str:
    """What an S3 request is, from its request line and headers (path-style addressing)."""
    method = method.upper()
    if method != "GET":
        return method
    path, _, query = target.partition("?")
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    if params & {"list-type", "prefix", "delimiter", "continuation-token", "marker"} or path.strip("/").count("/") == 0:
        return "LIST"
    return "GET-range" if "range" in headers else "GET"


class _RequestCounter:
    """Follows one connection's client->server bytes and counts each HTTP request it carries."""

    def __init__(self, counts: Counter[str], lock: threading.Lock) -> None:
        self.counts = counts
        self.lock = lock
        self.buffer = b""
        self.body_left = 0  # bytes of the current request's body still to come
        self.chunked = False
        self.broken = False  # not HTTP we understand: stop parsing, keep forwarding

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        while self.buffer and not self.broken:
            if self.body_left:
                take = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[take:]
                self.body_left -= take
                continue
            if self.chunked:
                if not self._chunk():
                    return
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 1 << 16:
                    self.broken = True
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) < 3:
                self.broken = True
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self.lock:
                self.counts[request_kind(parts[0], parts[1], headers)] += 1
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.chunked = True
            else:
                self.body_left = int(headers.get("content-length") or 0)

    def _chunk(self) -> bool:
        """Consume one chunk of a chunked body; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(self.buffer[:end].split(b";")[0] or b"0", 16)
        if size == 0:  # the last chunk, then (optional trailers and) an empty line
            trailer_end = self.buffer.find(b"\r\n\r\n", end)
            if trailer_end < 0:
                return False
            self.buffer = self.buffer[trailer_end + 4 :]
            self.chunked = False
            return True
        if len(self.buffer) < end + 2 + size + 2:
            return False
        self.buffer = self.buffer[end + 2 + size + 2 :]
        return True


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 in front of `target` (an http URL or host:port); a context manager.

    Args:
        target: the server to forward to (e.g. SeaweedFS's S3 endpoint).
        delay_s: latency added to each client->server chunk, measured from its arrival.
        port: the port to listen on (0: a free one).
    """

    def __init__(self, target: str, *, delay_s: float = 0.02, port: int = 0) -> None:
        parts = urlsplit(target if "://" in target else f"http://{target}")
        self.target_host = parts.hostname or HOST
        self.target_port = parts.port or 80
        self.delay_s = delay_s
        self.port = port
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def counts(self) -> dict[str, int]:
        """Requests seen so far, by kind."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> LatencyProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, HOST, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            open_connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in open_connections:
                task.cancel()
            await asyncio.gather(*open_connections, return_exceptions=True)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = self._server = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- forwarding ---------------------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        counter = _RequestCounter(self._counts, self._lock)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream_read() -> None:
            while data := await client_reader.read(1 << 16):
                counter.feed(data)
                await queue.put((time.monotonic() + self.delay_s, data))
            await queue.put((0.0, b""))

        async def upstream_write() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                server_writer.write(data)
                await server_writer.drain()
            with contextlib.suppress(OSError):
                server_writer.write_eof()

        async def downstream() -> None:
            while data := await server_reader.read(1 << 16):
                client_writer.write(data)
                await client_writer.drain()
            with contextlib.suppress(OSError):
                client_writer.write_eof()

        tasks = [asyncio.ensure_future(t()) for t in (upstream_read, upstream_write, downstream)]
        try:
            await asyncio.gather(*tasks)
        except (Exception, asyncio.CancelledError):  # a reset on either side, or the proxy stopping
            pass
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_writer, server_writer):
                with contextlib.suppress(Exception):
                    w.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.latency_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="server to forward to, e.g. http://127.0.0.1:8333")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="latency added to each request (ms)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    args = parser.parse_args(argv)
    proxy = LatencyProxy(args.target, delay_s=args.delay_ms / 1000, port=args.port).start()
    print(f"proxy on {proxy.endpoint} -> {args.target}, +{args.delay_ms:g} ms per request (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    stop.wait()
    proxy.stop()
    print(f"requests: {proxy.counts()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


