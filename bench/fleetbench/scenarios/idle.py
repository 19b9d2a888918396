"""Scenario 10: memory per idle keep-alive TLS connection. Each server (the HTTPS redirect site,
configured for IDLE_CONNS connections kept IDLE_KEEP_S) gets a warm-up of a few hundred connections
opened and closed; then its memory is read ("before"), IDLE_CONNS TLS connections are opened (each a
full handshake and one HTTP/1.1 keep-alive request, the response read) and held idle, the memory is
read again once it has settled ("after"), and the client counts how many connections the server
still holds. Reported per connection still open: the growth of VmRSS (10a; nginx master + workers
summed) and of PSS (10b; shared pages split between the processes that map them). One round: the
memory figures do not drift with the machine's speed as req/s do."""

import tempfile
import time

from .. import procs
from ..base import IDLE_CONNS, IDLE_KEEP_S, MiB, PATH_AND_QUERY, SERVERS, log
from ..load.idle import IdleClients
from ..measure import OtherLoad, peak_rss, pss, rss, wait_quiet
from ..probes import http_get, insecure_tls
from ..procs import PROCS, free_port, wait_until
from ..report import FAILURES, IDLE_CONFIGS, remember_config
from ..servers import caddy, fleetgate, nginx
from .redirect import check_redirect

STARTERS = {"fleetgate": fleetgate.start_redirect, "nginx": nginx.start_redirect, "caddy": caddy.start_redirect}
WARMUP_CONNS = 256
KiB = 1024


def settled_memory(pid, deadline_s=10.0, interval=0.5):
    """(VmRSS, PSS) once two readings `interval` apart differ by under 64 KiB (or at the deadline):
    the last responses are written and the buffers of the handshakes given back by then."""
    deadline = time.monotonic() + deadline_s
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = rss(pid)
        if abs(now - last) < 64 * KiB:
            break
        last = now
    return rss(pid), pss(pid)


def hold(port, count):
    """Opens `count` idle connections; returns (clients, summary). The caller closes the clients."""
    clients = IdleClients(port, "localhost", PATH_AND_QUERY, count)
    try:
        return clients, clients.open()
    except BaseException:
        clients.close()
        raise


def run(args, cert, key, results):
    title = f"{IDLE_CONNS:,} idle TLS keep-alive conns: memory per conn"
    row = results.row("10a", title + " (VmRSS growth)", "KiB/conn", higher_is_better=False,
                      target="≤ nginx", target_fn=lambda r: r.ratio("nginx") is not None and r.ratio("nginx") <= 1.0)
    pss_row = results.row("10b", title + " (PSS growth)", "KiB/conn", higher_is_better=False,
                          target="", target_fn=None)
    tls = insecure_tls()
    for server in SERVERS:
        d = tempfile.mkdtemp(prefix=f"{server}-s10-", dir=procs.TMP)
        http, https = free_port(), free_port()
        proc = STARTERS[server](d, http, https, cert, key, idle=True)
        remember_config(IDLE_CONFIGS, server, d)
        wait_until(f"{server} to redirect on https", proc,
                   lambda: check_redirect(*http_get(https, "localhost", PATH_AND_QUERY, tls=tls), server))
        notes = []
        try:
            warm, summary = hold(https, WARMUP_CONNS)
            warm.close()
            if summary["failed"]:
                notes.append(f"!! {server}: {summary['failed']} of the {WARMUP_CONNS} warm-up connections failed "
                             f"({summary['first_error']})")
            wait_quiet(args.wait_quiet)
            before = settled_memory(proc.pid)
            log(f"scenario 10 {server}: opening {IDLE_CONNS:,} TLS connections "
                f"(before: VmRSS {before[0] / MiB:.1f} MiB, PSS {before[1] / MiB:.1f} MiB)")
            other = OtherLoad()
            clients, summary = hold(https, IDLE_CONNS)
            try:
                after = settled_memory(proc.pid)
                still = clients.still_open()
                cores = other.split()
            finally:
                clients.close()
        except Exception as e:  # noqa: BLE001 - the row records it; the other servers still run
            FAILURES.append(f"scenario 10 {server}")
            row.skip(server, f"failed: {e}")
            pss_row.skip(server, "failed (see 10a)")
            log(f"  {server}: failed: {e}")
            PROCS.stop(proc)
            continue
        peak = peak_rss(proc.pid)
        alive = proc.poll() is None
        PROCS.stop(proc)
        if not alive:
            notes.append(f"!! {server} died while holding the connections (log {proc.bench_log})")
        if summary["failed"]:
            notes.append(f"!! {server}: {summary['failed']:,} of {IDLE_CONNS:,} connections failed to open "
                         f"(first: {summary['first_error']})")
        if still < summary["opened"]:
            notes.append(f"!! {server}: only {still:,} of the {summary['opened']:,} opened connections were still "
                         "open when the memory was read")
        if notes:
            FAILURES.append(f"scenario 10 {server}")
        n = max(1, still)
        per_rss, per_pss = (after[0] - before[0]) / n / KiB, (after[1] - before[1]) / n / KiB
        notes.append(f"{server}: {summary['opened']:,} connections opened in {summary['seconds']:.1f} s, "
                     f"{still:,} still open when measured; VmRSS {before[0] / MiB:.1f} → {after[0] / MiB:.1f} MiB, "
                     f"PSS {before[1] / MiB:.1f} → {after[1] / MiB:.1f} MiB")
        log(f"  {server}: {per_rss:.1f} KiB/conn (VmRSS), {per_pss:.1f} KiB/conn (PSS), {still:,} open"
            + ("; " + "; ".join(notes[:-1]) if len(notes) > 1 else ""))
        row.other[server], row.kthreads[server] = cores
        pss_row.other[server], pss_row.kthreads[server] = cores
        row.set(server, per_rss, peak, notes)
        pss_row.set(server, per_pss, peak, [])
    row.notes.append(f"one round; each server configured for {IDLE_CONNS:,}+ connections kept idle {IDLE_KEEP_S} s "
                     f"(see bench/README.md); a warm-up of {WARMUP_CONNS} connections opened and closed before "
                     "'before'; the client: 2 processes of Python asyncio ssl, 64 connections opening at once in "
                     "each")
