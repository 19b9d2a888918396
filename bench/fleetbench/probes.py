"""Probes: one HTTP/1.1 request on a new connection (plain or TLS), and probing many SNI names
until each has answered."""

import concurrent.futures
import socket
import ssl
import time

from .procs import tail


def http_get(port, host, path="/", tls=None, sni=None, timeout=2.0):
    """One request on a new connection; returns (status, headers dict) or raises."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=sni or host)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not head or not head[0].startswith("HTTP/"):
        raise RuntimeError(f"no HTTP response: {data[:80]!r}")
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(head[0].split()[1]), headers


def insecure_tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verifying_tls(cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=cafile)
    return ctx


def sni_probe(port, ctx, name, timeout=3.0):
    """A full handshake with `name` as SNI, the certificate verified for `name`, and one request."""
    status, _ = http_get(port, name, "/", tls=ctx, sni=name, timeout=timeout)
    return status == 301


def probe_many(port, ctx, names, threads=16):
    """Returns the names that failed."""
    done = probe_times(port, ctx, names, threads)
    return [n for n in names if n not in done]


def probe_times(port, ctx, names, threads=16):
    """Probes every name once; returns {name: time.monotonic() when it answered} for those served."""
    def one(n):
        try:
            return (n, time.monotonic()) if sni_probe(port, ctx, n) else None
        except Exception:  # noqa: BLE001 - a failure is what is counted
            return None
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(names)))) as ex:
        return dict(r for r in ex.map(one, names) if r is not None)


def wait_served(what, proc, port, ctx, names, deadline_s, threads=16):
    """Probes until every name has answered once; returns {name: seconds after proc started}."""
    t0 = proc.bench_started
    served = {}
    deadline = time.monotonic() + deadline_s
    while len(served) < len(names) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.bench_name} exited ({proc.returncode}) while waiting for {what}; "
                               f"log {proc.bench_log}:\n{tail(proc.bench_log)}")
        todo = [n for n in names if n not in served]
        for n, t in probe_times(port, ctx, todo, threads).items():
            served[n] = t - t0
        if len(served) < len(names):
            time.sleep(0.02)
    return served
