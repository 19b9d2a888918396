"""Scenario 10's client: many TLS connections, each a full handshake and one HTTP/1.1 keep-alive
request whose response is read whole, then held open and idle until told to close. A few processes
each run one asyncio loop (Python ssl, no certificate check: the handshake's cost is not what is
measured); each raises its RLIMIT_NOFILE for its share. While holding, a process can count how many
of its connections the server has not closed (its loop keeps reading, so a close is noticed)."""

import asyncio
import multiprocessing
import time

from ..probes import insecure_tls
from ..procs import raise_nofile


async def _open_one(port, host, path, ctx, sem, timeout):
    """One connection: handshake, `GET path` (keep-alive), the response head and Content-Length
    body read. Returns (reader, writer)."""
    async with sem:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host), timeout)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip() == "content-length":
                    length = int(value)
                elif name.strip() == "connection" and "close" in value:
                    raise RuntimeError("the server answered Connection: close")
                elif name.strip() == "transfer-encoding":
                    raise RuntimeError(f"unexpected transfer-encoding {value.strip()!r}")
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout)
            return reader, writer
        except BaseException:
            writer.transport.abort()
            raise


async def _hold(conn, port, host, path, count, concurrency, timeout):
    loop = asyncio.get_running_loop()
    ctx = insecure_tls()
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    results = await asyncio.gather(*(_open_one(port, host, path, ctx, sem, timeout) for _ in range(count)),
                                   return_exceptions=True)
    held = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    conn.send({"opened": len(held), "failed": len(errors), "seconds": time.monotonic() - t0,
               "first_error": repr(errors[0]) if errors else None})
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "count":
            await asyncio.sleep(0.1)  # let the loop take in whatever arrived
            conn.send({"open": sum(1 for r, w in held if not r.at_eof() and not w.is_closing())})
        else:  # "close"
            for _, w in held:
                w.transport.abort()
            conn.send({"closed": len(held)})
            return


def _worker(conn, port, host, path, count, concurrency, timeout):
    raise_nofile(count + 256)
    asyncio.run(_hold(conn, port, host, path, count, concurrency, timeout))


class IdleClients:
    """`total` connections over `procs` processes, at most `concurrency` opening at once in each."""

    def __init__(self, port, host, path, total, procs=2, concurrency=64, timeout=30.0):
        self.total, self.timeout = total, timeout
        self.workers = []
        for i in range(procs):
            share = total // procs + (1 if i < total % procs else 0)
            parent, child = multiprocessing.Pipe()
            p = multiprocessing.Process(target=_worker, args=(child, port, host, path, share, concurrency, timeout),
                                        daemon=True)
            self.workers.append((p, parent))

    def open(self, deadline_s=180.0):
        """Starts the processes and waits until each has opened its share (or failed to):
        {opened, failed, seconds, first_error}."""
        t0 = time.monotonic()
        for p, _ in self.workers:
            p.start()
        got = [self._recv(conn, deadline_s - (time.monotonic() - t0)) for _, conn in self.workers]
        errors = [g["first_error"] for g in got if g["first_error"]]
        return {"opened": sum(g["opened"] for g in got), "failed": sum(g["failed"] for g in got),
                "seconds": time.monotonic() - t0, "first_error": errors[0] if errors else None}

    def still_open(self):
        for _, conn in self.workers:
            conn.send("count")
        return sum(self._recv(conn, 30)["open"] for _, conn in self.workers)

    def close(self):
        for p, conn in self.workers:
            if p.pid is None:  # never started
                continue
            if p.is_alive():
                try:
                    conn.send("close")
                    self._recv(conn, 30)
                except (OSError, EOFError, RuntimeError):
                    pass
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)

    def _recv(self, conn, timeout):
        if not conn.poll(max(0.0, timeout)):
            raise RuntimeError(f"the idle-connection client did not answer within {timeout:.0f} s")
        return conn.recv()
