"""Scenario 12: TLS session resumption across a fleet. Three fleetgate nodes share one directory
store (and with it the TLS ticket keys) behind a round-robin HAProxy, so consecutive connections
of one browser land on different nodes. Measured: the share of handshakes resumed when each
browser offers its last session, resumed handshakes per second, and full handshakes per second
when no browser offers one (the same setup, the baseline)."""

import os
import tempfile

from .. import procs
from ..base import MiB, SERVERS, log
from ..load.resume import resume_load
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..probes import http_get, verifying_tls
from ..procs import COMMANDS, PROCS, free_port, wait_until
from ..report import FAILURES
from ..servers import fleetgate, haproxy

NODES = 3
NAME = "localhost"


def _uses_store_keys(proc):
    with open(proc.bench_log, errors="replace") as f:
        return "TLS ticket keys from the store in use" in f.read()


def run(args, ca, cert, key, results):
    rate_row = results.row("12a", f"{NODES} nodes behind HAProxy: handshakes resumed", "%", higher_is_better=True,
                           target="≥ 99 %", target_fn=lambda r: (r.value("fleetgate") or 0) >= 99.0)
    resumed_row = results.row("12b", f"{NODES} nodes behind HAProxy: resumed handshakes/s", "hs/s",
                              higher_is_better=True, target="", target_fn=None)
    full_row = results.row("12c", f"{NODES} nodes behind HAProxy: full handshakes/s (no session offered)", "hs/s",
                           higher_is_better=True, target="", target_fn=None)
    for server in SERVERS[1:]:
        rate_row.skip(server, "not measured in 12a-12c (a fleetgate fleet sharing its ticket keys through its store)")
    d = tempfile.mkdtemp(prefix="fleetgate-s12-", dir=procs.TMP)
    store = os.path.join(d, "store")
    nodes = []
    for i in range(NODES):
        nd = os.path.join(d, f"node{i}")
        os.makedirs(nd)
        https = free_port()
        nodes.append((fleetgate.start_fleet_node(nd, free_port(), https, cert, key, store, f"n{i}"), https))
    lb = free_port()
    lb_proc = haproxy.start_round_robin(d, lb, [https for _, https in nodes])
    ctx = verifying_tls(ca)
    for proc, https in nodes:
        wait_until(f"{proc.bench_name} to serve HTTPS", proc,
                   lambda https=https: http_get(https, NAME, tls=ctx, sni=NAME)[0] == 301)
        wait_until(f"{proc.bench_name} to use the fleet's ticket keys", proc, lambda proc=proc: _uses_store_keys(proc))
    wait_until("haproxy to forward", lb_proc, lambda: http_get(lb, NAME, tls=ctx, sni=NAME)[0] == 301)

    measured = {}
    for label, keep in (("resuming", True), ("full", False)):
        log(f"scenario 12: {NODES} nodes behind HAProxy, {label} handshakes for {args.seconds} s")
        wait_quiet(args.wait_quiet)
        other = OtherLoad()
        measured[label] = resume_load(lb, ca, NAME, args.seconds, keep)
        measured[label + "_other"] = other.split()
    COMMANDS.comment(f"scenario 12 load: bench/run resume_load(), 2 processes x 8 threads of Python ssl through "
                     f"HAProxy (TCP round robin over {NODES} fleetgate nodes sharing a dir store), a new connection "
                     f"per request, each thread offering its last session (session=) or, for the baseline, none; "
                     f"{args.seconds} s each")
    rss = sum(peak_rss(proc.pid) for proc, _ in nodes)
    alive = all(proc.poll() is None for proc, _ in nodes)
    for proc, _ in nodes:
        PROCS.stop(proc)
    PROCS.stop(lb_proc)

    rate, resumed, full, failed, errors = measured["resuming"]
    share = 100.0 * resumed / max(1, resumed + full)
    notes = [f"fleetgate: with sessions offered, {resumed} resumed and {full} full handshakes "
             f"(each of the 16 browsers' first is full), {failed} failed{f' ({errors[0]})' if errors else ''}; "
             f"RSS summed over the {NODES} nodes"]
    b_rate, b_resumed, b_full, b_failed, b_errors = measured["full"]
    notes.append(f"fleetgate: without sessions, {b_full} full handshakes, {b_resumed} resumed, {b_failed} failed"
                 + (f" ({b_errors[0]})" if b_errors else ""))
    if not alive:
        notes.append("fleetgate: a node died during the run")
    if failed or b_failed or not alive:
        FAILURES.append("scenario 12 fleetgate")
    rate_row.set("fleetgate", share, rss, notes)
    resumed_row.set("fleetgate", rate * resumed / max(1, resumed + full), rss, [])
    full_row.set("fleetgate", b_rate, rss, [])
    rate_row.other["fleetgate"], rate_row.kthreads["fleetgate"] = measured["resuming_other"]
    resumed_row.other["fleetgate"], resumed_row.kthreads["fleetgate"] = measured["resuming_other"]
    full_row.other["fleetgate"], full_row.kthreads["fleetgate"] = measured["full_other"]
    log(f"  fleetgate: {share:.1f} % resumed ({resumed} of {resumed + full}), {rate:.0f} handshakes/s with "
        f"sessions, {b_rate:.0f} full handshakes/s without; {NODES} nodes' RSS {rss / MiB:.1f} MiB")
