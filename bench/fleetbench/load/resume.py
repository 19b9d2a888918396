"""Scenario 7's load: processes x threads of Python ssl, each thread one browser that keeps the
session of its last connection and offers it on the next (`session=`), a new connection per
request; or, for the baseline, never offers one. Counts resumed and full handshakes."""

import concurrent.futures
import socket
import ssl
import time

from ..probes import verifying_tls


def _visit(port, ctx, name, session, timeout=3.0):
    """One connection: handshake (offering `session`), one request, the answer read to the end
    (TLS 1.3 tickets arrive after the handshake). Returns (resumed, session to offer next)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=name, session=session)
        raw = sock
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.1 301"):
            raise RuntimeError(f"unexpected answer {data[:40]!r}")
        return sock.session_reused, sock.session
    finally:
        raw.close()


def _worker(port, cafile, name, seconds, threads, keep_sessions):
    """Runs in a child process: `threads` browsers until the deadline."""
    import threading

    ctx = verifying_tls(cafile)
    counts = [[0, 0, 0] for _ in range(threads)]  # resumed, full, failed
    first_error = []
    deadline = time.monotonic() + seconds

    def loop(i):
        session = None
        while time.monotonic() < deadline:
            try:
                resumed, new = _visit(port, ctx, name, session)
                counts[i][0 if resumed else 1] += 1
                if keep_sessions:
                    session = new
            except (OSError, ssl.SSLError, RuntimeError) as e:
                counts[i][2] += 1
                session = None
                if not first_error:
                    first_error.append(repr(e))
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [sum(c[k] for c in counts) for k in range(3)], first_error[:1]


def resume_load(port, cafile, name, seconds, keep_sessions, procs=2, threads=8):
    """(handshakes/s, resumed, full, failed, errors) over `seconds`; `keep_sessions` False is the
    full-handshake baseline."""
    t0 = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(procs) as ex:
        futs = [ex.submit(_worker, port, cafile, name, seconds, threads, keep_sessions) for _ in range(procs)]
        res = [f.result(timeout=seconds + 60) for f in futs]
    elapsed = time.monotonic() - t0
    resumed = sum(r[0][0] for r in res)
    full = sum(r[0][1] for r in res)
    failed = sum(r[0][2] for r in res)
    errors = [e for r in res for e in r[1]]
    return (resumed + full) / elapsed, resumed, full, failed, errors
