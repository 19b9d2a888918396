"""Scenario 5's load: processes x threads of Python ssl, each connection a full handshake with a
random SNI name, the certificate verified, one request."""

import concurrent.futures
import random
import threading
import time

from ..probes import sni_probe, verifying_tls


def _sni_load_worker(port, cafile, names, seconds, threads, seed):
    """Runs in a child process: `threads` threads, each doing new-connection handshakes with a
    random SNI name until the deadline. No session is ever reused (no `session=`)."""
    ctx = verifying_tls(cafile)
    rnd = random.Random(seed)
    ok = [0] * threads
    bad = [0] * threads
    first_error = []
    deadline = time.monotonic() + seconds

    def loop(i):
        r = random.Random(rnd.random())
        while time.monotonic() < deadline:
            name = names[r.randrange(len(names))]
            try:
                if sni_probe(port, ctx, name):
                    ok[i] += 1
                else:
                    bad[i] += 1
            except Exception as e:  # noqa: BLE001
                bad[i] += 1
                if not first_error:
                    first_error.append(f"{name}: {e!r}")
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(ok), sum(bad), first_error[:1]


def sni_load(port, cafile, names, seconds, procs=2, threads=8):
    """Handshakes per second over random SNI names: `procs` processes x `threads` threads."""
    t0 = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(procs) as ex:
        futs = [ex.submit(_sni_load_worker, port, cafile, names, seconds, threads, i) for i in range(procs)]
        res = [f.result(timeout=seconds + 60) for f in futs]
    elapsed = time.monotonic() - t0
    ok = sum(r[0] for r in res)
    bad = sum(r[1] for r in res)
    errs = [e for r in res for e in r[2]]
    return ok / elapsed, ok, bad, errs
