"""Scenario 8: HTTP/2 over TLS (ALPN h2), loaded with h2load: the redirect site of scenarios 2-3 and
the proxy of scenario 4 (here on its HTTPS port, HTTP/1.1 keep-alive to the upstream), each with
`-c 16 -m 10` and `-c 64 -m 100` (connections × concurrent streams), in interleaved rounds, fewer
and shorter than scenarios 1-4 (four loads per server and round; half of --seconds each). Each
server is started once per round and kind, and takes both loads one after the other. Rows: req/s (target ≥ 1.2 × nginx with p99 no
worse) and p99 latency, each ratio the median of the per-round ratios."""

import statistics
import tempfile

from .. import procs
from ..base import PATH_AND_QUERY, SERVERS, log
from ..load.h2load import h2load
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..probes import http_get, insecure_tls
from ..procs import PROCS, free_port, wait_until
from ..report import CONFIGS, FAILURES, H2_PROXY_CONFIGS, remember_config
from ..rounds import interleaved, median_run, pair_rounds
from ..servers import caddy, fleetgate, nginx, upstream as upstream_server
from ..servers.upstream import check_proxied
from .redirect import check_redirect

LOADS = [(16, 10), (64, 100)]  # h2load -c, -m
# The proxies' idle upstream connections: fleetgate keeps up to 1024 per upstream
# (MAX_IDLE_PER_UPSTREAM in crates/edge/src/proxy/pool.rs), and so do nginx (`keepalive`, per
# worker) and Caddy here. With scenario 4's 64, up to 6,400 concurrent streams over HTTP/1.1 to
# the upstream made nginx and Caddy close and reopen an upstream connection for most requests.
PROXY_IDLE_POOL = 1024
ROUNDS_MAX = 3  # of args.rounds (5 in the full run)
TARGET = 1.2
REDIRECT = {"fleetgate": fleetgate.start_redirect, "nginx": nginx.start_redirect, "caddy": caddy.start_redirect}


def rows(results, sids, what):
    """(req/s row, p99 row) per load; the req/s row's target looks at the p99 row too."""
    out = []
    for sid, (c, m) in zip(sids, LOADS):
        rps = results.row(sid, f"h2 {what}, -c {c} -m {m}", "req/s", higher_is_better=True,
                          target=f"≥ {TARGET} × nginx, p99 ≤ nginx", target_fn=met)
        rps.p99_row = results.row(sid, f"h2 {what}, -c {c} -m {m}, p99 latency", "ms", higher_is_better=False,
                                  target="", target_fn=None)
        out.append((rps, rps.p99_row))
    return out


def met(row):
    rps, p99 = row.ratio("nginx"), row.p99_row.ratio("nginx")
    return rps is not None and rps >= TARGET and p99 is not None and p99 <= 1.0


def check_run(server, label, r, expect):
    """Loud notes for anything but a clean h2 run: failed/errored/timed-out requests, another
    protocol than h2, statuses outside `expect`, h2load killed at its deadline."""
    notes = []
    c = r["counts"]
    if not c:
        notes.append(f"!! {server} {label}: h2load printed no request counts (exit {r['exit']}): "
                     + " | ".join(r["raw"].strip().splitlines()[-4:]))
    elif c["failed"] or c["errored"] or c["timeout"]:
        notes.append(f"!! {server} {label}: {c['failed']:,} of {c['done']:,} requests FAILED "
                     f"({c['errored']:,} errored, {c['timeout']:,} timed out; status {r['status']})")
    if r["protocol"] != "h2":
        notes.append(f"!! {server} {label}: application protocol {r['protocol']!r}, not h2")
    wrong = {k: v for k, v in r["status"].items() if v and k != expect}
    if wrong:
        notes.append(f"!! {server} {label}: responses outside {expect}: {wrong}")
    if r["killed"]:
        notes.append(f"!! {server} {label}: h2load did not finish in time and was killed")
    return notes


def measure(args, kind, starters, ready, path, expect, row_pairs, rounds, seconds, upstream_counts=None):
    """`rounds` interleaved rounds; in each, every server started once and given both loads.
    upstream_counts: () -> (connections, requests) the upstream has seen (the proxy rows note how
    many connections each proxy opened for its requests)."""
    runs = {load: {server: [] for server in SERVERS} for load in LOADS}
    for rnd, server in interleaved(rounds):
        d = tempfile.mkdtemp(prefix=f"{server}-s8-{kind}-r{rnd}-", dir=procs.TMP)
        http, https = free_port(), free_port()
        proc = starters[server](d, http, https)
        remember_config(H2_PROXY_CONFIGS if kind == "proxy" else CONFIGS, server, d)
        wait_until(f"{server} to answer the {kind} over HTTPS", proc, lambda: ready(https, server))
        url = f"https://localhost:{https}{path}"
        for (c, m), (row, _) in zip(LOADS, row_pairs):
            label = f"{kind} -c {c} -m {m}"
            log(f"scenario {row.sid} {server} (round {rnd + 1}/{rounds}): h2load {label}, {seconds} s")
            wait_quiet(args.wait_quiet)
            before = upstream_counts() if upstream_counts else None
            other = OtherLoad()
            r = h2load(url, seconds, c, m, warmup=args.warmup)
            r["other"] = other.split()
            after = upstream_counts() if upstream_counts else None
            alive = proc.poll() is None
            notes = check_run(server, label, r, expect)
            if not alive:
                notes.append(f"!! {server} died during h2load {label} (log {proc.bench_log})")
            if notes:
                FAILURES.append(f"scenario {row.sid} {server}")
            if rnd == 0 and r["protocol"]:
                tls = "; ".join(line.strip() for line in r["raw"].splitlines()
                                if line.startswith(("TLS Protocol", "Cipher", "Server Temp Key")))
                notes.append(f"{server}: h2load negotiated {r['protocol']} ({tls})")
            if before and after:
                # minus the second stub_status request itself (one connection, one request)
                notes.append(f"{server} round {rnd + 1}: the upstream accepted {after[0] - before[0] - 1:,} "
                             f"connections for {after[1] - before[1] - 1:,} requests (warm-up included)")
            # each load's peak RSS is the server's peak so far (both loads share one process)
            runs[(c, m)][server].append((r, peak_rss(proc.pid), notes))
            log(f"  {server}: {r['rps']:.0f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms"
                + ("; " + "; ".join(notes) if notes else ""))
            if not alive:
                break
        PROCS.stop(proc)
    for load, (row, p99_row) in zip(LOADS, row_pairs):
        for server in SERVERS:
            if not runs[load][server]:
                continue
            r, rss, notes = median_run(server, runs[load][server])
            p99s = [run[0]["p99"] for run in runs[load][server] if run[0]["p99"] is not None]
            row.other[server], row.kthreads[server] = r["other"]
            p99_row.other[server], p99_row.kthreads[server] = r["other"]
            row.set(server, r["rps"], rss, notes, detail=r)
            if p99s:
                p99_row.set(server, statistics.median(p99s), rss, [])
                if len(p99s) > 1:
                    p99_row.notes.append(f"{server}: p99 per round " + ", ".join(f"{x:.2f}" for x in p99s)
                                         + " ms (the median is reported)")
        pair_rounds(row, runs[load])
        pair_rounds(p99_row, runs[load], key="p99")


def run(args, cert, key, results):
    rounds = min(args.rounds, ROUNDS_MAX)
    seconds = max(3, args.seconds // 2)
    tls = insecure_tls()

    def redirect_ready(port, server):
        return check_redirect(*http_get(port, "localhost", PATH_AND_QUERY, tls=tls), server)

    measure(args, "redirect",
            {s: (lambda d, http, https, s=s: REDIRECT[s](d, http, https, cert, key)) for s in SERVERS},
            redirect_ready, PATH_AND_QUERY, "3xx", rows(results, ["8a", "8b"], "redirect"), rounds, seconds)

    ud = tempfile.mkdtemp(prefix="upstream-s8-", dir=procs.TMP)
    uport = free_port()
    upstream = upstream_server.start(ud, uport)
    try:
        wait_until("the upstream to answer 200", upstream, lambda: check_proxied(uport, "upstream"))
        measure(args, "proxy",
                {"fleetgate": lambda d, http, https: fleetgate.start_proxy(d, http, https, cert, key, uport),
                 "nginx": lambda d, http, https: nginx.start_proxy(d, http, https, cert, key, uport,
                                                                   idle_pool=PROXY_IDLE_POOL),
                 "caddy": lambda d, http, https: caddy.start_proxy(d, http, https, cert, key, uport,
                                                                   idle_pool=PROXY_IDLE_POOL)},
                lambda port, server: check_proxied(port, server, tls=tls), "/", "2xx",
                rows(results, ["8c", "8d"], "proxy"), rounds, seconds, lambda: upstream_server.counts(uport))
        if upstream.poll() is not None:
            raise RuntimeError(f"the upstream exited ({upstream.returncode}); log {upstream.bench_log}")
    finally:
        PROCS.stop(upstream)
    results.rows[-1].notes.append(
        f"{rounds} interleaved round(s) of {seconds} s per load"
        + (f" after a {args.warmup} s warm-up on the same connections (h2load --warm-up-time)" if args.warmup else "")
        + "; h2load -t1 offering ALPN h2 only; the proxy's upstream is scenario 4's nginx, HTTP/1.1 keep-alive, "
        f"up to {PROXY_IDLE_POOL} idle upstream connections kept by each proxy (nginx: per worker)")
