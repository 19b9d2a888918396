"""Scenario 4: proxy to a local upstream, keep-alive on both sides: req/s and p99 latency, in
interleaved rounds, loaded with wrk. One upstream (nginx answering `GET /` with 200 "ok") serves all
three proxies; each proxy listens on plain HTTP and keeps its upstream connections alive.
Equivalent configs: each proxy sends the forwarding fields fleetgate sends by default
(X-Forwarded-For/-Proto/-Host, Forwarded, Via up; Via back), so the proxies and the upstream do the
same work; upstream.forwarding_check verifies it."""

import os
import tempfile

from .. import procs
from ..base import MiB, SERVERS, log
from ..load.wrk import wrk
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..procs import PROCS, free_port, wait_until
from ..report import FAILURES, PROXY_CONFIGS, remember_config
from ..rounds import interleaved, median_run, pair_rounds
from ..servers import caddy, fleetgate, nginx, upstream as upstream_server
from ..servers.upstream import UPSTREAM_BODY, check_proxied, forwarding_check

PROXY_STARTERS = {"fleetgate": fleetgate.start_proxy, "nginx": nginx.start_proxy, "caddy": caddy.start_proxy}


def run(args, cert, key, results):
    row = results.row("4", "proxy to a local upstream", "req/s", higher_is_better=True,
                      target="≥ 1.0 × nginx", target_fn=lambda r: r.ratio("nginx") is not None and r.ratio("nginx") >= 1.0)
    p99_row = results.row("4", "proxy to a local upstream, p99 latency", "ms", higher_is_better=False,
                          target="", target_fn=None)
    ud = tempfile.mkdtemp(prefix="upstream-s4-", dir=procs.TMP)
    uport = free_port()
    upstream = upstream_server.start(ud, uport)
    with open(os.path.join(ud, "nginx.conf")) as f:
        PROXY_CONFIGS["upstream (nginx)"] = ("nginx", f.read())
    wait_until("the upstream to answer 200", upstream, lambda: check_proxied(uport, "upstream"))
    runs = {server: [] for server in SERVERS}
    try:
        for rnd, server in interleaved(args.rounds):
            d = tempfile.mkdtemp(prefix=f"{server}-s4-r{rnd}-", dir=procs.TMP)
            http, https = free_port(), free_port()
            proc = PROXY_STARTERS[server](d, http, https, cert, key, uport)
            remember_config(PROXY_CONFIGS, server, d)
            wait_until(f"{server} to proxy to the upstream", proc, lambda: check_proxied(http, server))
            seen_note = forwarding_check(http, server)
            url = f"http://localhost:{http}/"
            before = upstream_server.counts(uport)  # before the warm-up: it opens the pooled connections
            if args.warmup:
                wrk(url, args.warmup, record=False)
            log(f"scenario 4 {server} (round {rnd + 1}/{args.rounds}): wrk {args.seconds} s")
            wait_quiet(args.wait_quiet)
            other = OtherLoad()
            r = wrk(url, args.seconds)
            r["other"] = other.split()
            after = upstream_server.counts(uport)
            # minus this stub_status request itself (one connection, one request)
            conns, reqs = after[0] - before[0] - 1, after[1] - before[1] - 1
            rss = peak_rss(proc.pid)
            alive = proc.poll() is None
            PROCS.stop(proc)
            notes = []
            if not alive:
                notes.append(f"{server} died during the run (log {proc.bench_log})")
            if upstream.poll() is not None:
                raise RuntimeError(f"the upstream exited ({upstream.returncode}); log {upstream.bench_log}")
            if r["non_2xx_3xx"]:
                notes.append(f"{server}: {r['non_2xx_3xx']} non-2xx/3xx responses")
            if r["errors"]:
                notes.append(f"{server}: wrk socket errors {r['errors']}")
            if r["requests"] == 0:
                notes.append(f"{server}: wrk completed no request")
            if notes:
                FAILURES.append(f"scenario 4 {server}")
            notes.append(f"{server}: the upstream accepted {conns} connections for {reqs} requests "
                         f"(wrk completed {r['requests']}{' plus its warm-up' if args.warmup else ''})")
            if rnd == 0:
                notes.append(seen_note)
            runs[server].append((r, rss, notes))
            log(f"  {server}: {r['rps']:.0f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms, "
                f"rss {rss / MiB:.1f} MiB{'; ' + '; '.join(notes) if notes else ''}")
    finally:
        PROCS.stop(upstream)
    for server in SERVERS:
        if not runs[server]:
            continue
        r, rss, notes = median_run(server, runs[server])
        row.other[server], row.kthreads[server] = r["other"]
        p99_row.other[server], p99_row.kthreads[server] = r["other"]
        row.set(server, r["rps"], rss, notes, detail=r)
        p99_row.set(server, r["p99"], rss, [])
    pair_rounds(row, runs)
    row.notes.append(f"upstream: one nginx (worker_processes 1) on 127.0.0.1:{uport} answering 200 "
                     f"\"{UPSTREAM_BODY}\", shared by all three proxies; its CPU and memory are in no column")
