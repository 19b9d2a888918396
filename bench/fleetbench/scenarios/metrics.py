"""Scenario 7: what the request path's Prometheus metrics cost. fleetgate without `[admin]` (no
recorder: every request-path metric is a no-op) against fleetgate with it (requests counted per
site and code, durations in histograms, connections and upstreams tracked), in interleaved rounds
on the two loads where the per-request cost weighs most: scenario 1's HTTP redirect and scenario
4's proxy, keep-alive. Reported: the per-round ratio on/off, its median; the target is ≥ 0.97."""

import statistics
import tempfile

from .. import procs
from ..base import MiB, PATH_AND_QUERY, log
from ..load.wrk import wrk
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..probes import http_get
from ..procs import PROCS, free_port, wait_until
from ..report import FAILURES
from ..servers import fleetgate, upstream as upstream_server
from ..servers.upstream import check_proxied
from .redirect import check_redirect

VARIANTS = ["off", "on"]
TARGET = 0.97


def rounds(n):
    """(round, variant), the order turning around every other round as in rounds.interleaved."""
    return [(rnd, v) for rnd in range(n) for v in (VARIANTS if rnd % 2 == 0 else VARIANTS[::-1])]


def measure(args, sid, title, start, ready, url):
    runs = {v: [] for v in VARIANTS}
    for rnd, variant in rounds(max(args.rounds, 2)):
        d = tempfile.mkdtemp(prefix=f"fleetgate-{variant}-s{sid}-r{rnd}-", dir=procs.TMP)
        http = free_port()
        proc = start(d, http, free_port(), variant == "on")
        wait_until(f"fleetgate (metrics {variant}) to answer", proc, lambda: ready(http))
        if args.warmup:
            wrk(url(http), args.warmup, record=False)
        log(f"scenario {sid} metrics {variant} (round {rnd + 1}): wrk {args.seconds} s")
        wait_quiet(args.wait_quiet)
        other = OtherLoad()
        r = wrk(url(http), args.seconds)
        r["other"] = other.split()
        rss = peak_rss(proc.pid)
        alive = proc.poll() is None
        PROCS.stop(proc)
        if not alive or r["non_2xx_3xx"] or r["errors"] or not r["requests"]:
            FAILURES.append(f"scenario {sid} metrics {variant}")
            raise RuntimeError(f"scenario {sid}, metrics {variant}: died={not alive}, non-2xx/3xx "
                               f"{r['non_2xx_3xx']}, socket errors {r['errors']}, requests {r['requests']}")
        runs[variant].append((r, rss))
        log(f"  metrics {variant}: {r['rps']:.0f} req/s, p99 {r['p99']} ms, rss {rss / MiB:.1f} MiB")
    ratios = [on[0]["rps"] / off[0]["rps"] for off, on in zip(runs["off"], runs["on"])]
    ratio = statistics.median(ratios)
    return runs, ratios, ratio


def add_row(results, sid, title, runs, ratios, ratio):
    row = results.row(sid, title, "req/s", higher_is_better=True,
                      target=f"on ≥ {TARGET} × off (on/off {ratio:.3f})",
                      target_fn=lambda r: ratio >= TARGET)
    on = sorted(runs["on"], key=lambda run: run[0]["rps"])[len(runs["on"]) // 2]
    off = sorted(runs["off"], key=lambda run: run[0]["rps"])[len(runs["off"]) // 2]
    row.other["fleetgate"], row.kthreads["fleetgate"] = on[0]["other"]
    row.set("fleetgate", on[0]["rps"], max(run[1] for run in runs["on"]), [], detail=on[0])
    row.notes.append("the fleetgate column is metrics on; metrics off: median "
                     f"{off[0]['rps']:,.0f} req/s (rounds " + ", ".join(f"{r[0]['rps']:,.0f}" for r in runs["off"])
                     + "); metrics on: rounds " + ", ".join(f"{r[0]['rps']:,.0f}" for r in runs["on"]))
    row.notes.append("per-round on/off " + ", ".join(f"{x:.3f}" for x in ratios) + f", median {ratio:.3f} (reported)")
    row.skip("nginx", "not measured here (fleetgate against itself)")
    row.skip("caddy", "not measured here (fleetgate against itself)")


def run(args, cert, key, results):
    def redirect_start(d, http, https, on):
        return fleetgate.start_redirect(d, http, https, cert, key, metrics=on)

    def redirect_ready(port):
        return check_redirect(*http_get(port, "localhost", PATH_AND_QUERY), "fleetgate")

    add_row(results, "7", "metrics on/off: HTTP redirect, keep-alive",
            *measure(args, "7", "redirect", redirect_start, redirect_ready,
                     lambda port: f"http://localhost:{port}{PATH_AND_QUERY}"))

    ud = tempfile.mkdtemp(prefix="upstream-s7-", dir=procs.TMP)
    uport = free_port()
    upstream = upstream_server.start(ud, uport)
    try:
        wait_until("the upstream to answer 200", upstream, lambda: check_proxied(uport, "upstream"))

        def proxy_start(d, http, https, on):
            return fleetgate.start_proxy(d, http, https, cert, key, uport, metrics=on)

        add_row(results, "7", "metrics on/off: proxy, keep-alive",
                *measure(args, "7", "proxy", proxy_start, lambda port: check_proxied(port, "fleetgate"),
                         lambda port: f"http://localhost:{port}/"))
    finally:
        PROCS.stop(upstream)
