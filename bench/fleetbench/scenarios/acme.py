"""Scenario 6: issuance from a local Pebble: seconds from start to the first certificate served,
and to all 50 (HTTP-01). nginx has no ACME client."""

import os
import re
import tempfile

from .. import procs
from ..base import ACME_COUNT, ACME_DOMAIN, MiB, log
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..probes import verifying_tls, wait_served
from ..procs import PROCS, free_port, tail
from ..report import FAILURES
from ..servers import caddy, fleetgate, pebble

ACME_STARTERS = {"fleetgate": fleetgate.start_acme, "caddy": caddy.start_acme}


def run(args, results):
    first_row = results.row("6a", "Pebble: start to first cert (s)", "s", higher_is_better=False,
                            target="≤ 1 s", target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") <= 1.0)
    all_row = results.row("6b", f"Pebble: start to {ACME_COUNT} certs (s)", "s", higher_is_better=False,
                          target="≤ 10 s", target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") <= 10.0)
    for row in (first_row, all_row):
        row.skip("nginx", "has no ACME client (certbot is out of scope)")
    names = [f"a{i:02d}.{ACME_DOMAIN}" for i in range(ACME_COUNT)]
    servers = ["fleetgate"] if args.quick else ["fleetgate", "caddy"]
    if args.quick:
        for row in (first_row, all_row):
            row.skip("caddy", "skipped in --quick (certmagic paces orders: ~10 per 10 s)")
    for server in servers:
        d = tempfile.mkdtemp(prefix=f"{server}-s6-", dir=procs.TMP)
        http, https = free_port(), free_port()
        directory, ca_root, root, pebble_procs = pebble.start(d, http, https)
        ctx = verifying_tls(root)
        wait_quiet(args.wait_quiet)
        other = OtherLoad()
        proc = ACME_STARTERS[server](d, http, https, directory, ca_root, names)
        log(f"scenario 6 {server}: waiting for {ACME_COUNT} certificates from Pebble")
        try:
            served = wait_served("certificates from Pebble", proc, https, ctx, names, 30 if args.quick else 60)
        except RuntimeError as e:
            served = {}
            log(f"  {e}")
        first_row.other[server], first_row.kthreads[server] = other.split()
        all_row.other[server], all_row.kthreads[server] = first_row.other[server], first_row.kthreads[server]
        rss = peak_rss(proc.pid)
        alive = proc.poll() is None
        PROCS.stop(proc)
        for p in pebble_procs:
            PROCS.stop(p)
        orders = tail(os.path.join(d, "pebble.log"), 10 ** 6).count("POST /order-plz")
        notes = [f"{server}: {len(served)}/{ACME_COUNT} certificates served (verified against Pebble's root); "
                 f"Pebble saw {orders} new-order requests"]
        if not alive:
            notes.append(f"{server} exited ({proc.returncode}); log {proc.bench_log}")
        first = min(served.values()) if served else None
        every = max(served.values()) if len(served) == len(names) else None
        if every is None:
            FAILURES.append(f"scenario 6 {server}")
            last = re.sub(r"\x1b\[[0-9;]*m", "", " | ".join(tail(proc.bench_log, 6).splitlines()))[:1500]
            notes.append(f"{server}: not every certificate was served before the deadline; temp dir kept; "
                         f"last log lines: {last}")
        first_row.set(server, first, rss, notes)
        all_row.set(server, every, rss, [])
        fmt = lambda v: "—" if v is None else f"{v:.2f} s"  # noqa: E731
        log(f"  {server}: first {fmt(first)}, all {fmt(every)}, rss {rss / MiB:.1f} MiB; {notes[0]}")
