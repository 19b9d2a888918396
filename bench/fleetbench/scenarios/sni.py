"""Scenario 5: 10,000 sites, each with its own certificate: seconds from start until a 200-name
sample is served (then every name verified), and handshakes per second over random SNI names;
then (5c, 5d; not in --quick) the same for fleetgate alone with 100,000 sites."""

import os
import random
import tempfile
import time

from .. import procs
from ..base import MiB, SERVERS, SNI_COUNT, SNI_MAX, log
from ..certs import sni_certs, sni_name
from ..load.sni import sni_load
from ..measure import OtherLoad, all_pids, peak_rss, ppid_of, pss, wait_quiet
from ..probes import probe_many, verifying_tls, wait_served
from ..procs import COMMANDS, PROCS, free_port
from ..report import FAILURES
from ..servers import caddy, fleetgate, nginx

SNI_STARTERS = {"fleetgate": fleetgate.start_sni, "nginx": nginx.start_sni, "caddy": caddy.start_sni}


def run(args, results):
    base = sni_certs()
    cafile = os.path.join(base, "ca.pem")
    ctx = verifying_tls(cafile)
    names = [sni_name(i) for i in range(SNI_COUNT)]
    servers = ["fleetgate", "caddy"] if args.quick else SERVERS
    ready_row = results.row("5a", f"{SNI_COUNT:,} certs: start to serving (s)", "s", higher_is_better=False,
                            target="≤ 3 s and < 100 MiB",
                            target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") <= 3.0
                            and r.rss.get("fleetgate", 1 << 60) < 100 * MiB)
    hs_row = results.row("5b", f"{SNI_COUNT:,} certs: handshakes/s, random SNI", "hs/s", higher_is_better=True,
                         target="", target_fn=None)
    for server in SERVERS:
        if server not in servers:
            ready_row.skip(server, "skipped in --quick")
            hs_row.skip(server, "skipped in --quick")
    rng = random.Random(5)
    # Warm the page cache first, so whichever server goes first does not pay for reading the
    # files from disk (a full run once measured fleetgate, which goes first, at 13.9 s cold and
    # 1.2 s warm).
    count = SNI_COUNT if args.quick else SNI_MAX
    for i in range(count):
        for ext in ("pem", "key"):
            with open(os.path.join(base, "certs", f"{sni_name(i)}.{ext}"), "rb") as f:
                f.read()
    for server in servers:
        check = names if not args.quick else rng.sample(names, 500)
        measure(args, server, base, names, check, rng, ready_row, hs_row)
    if args.quick:
        return
    # 5c/5d: the large fleet, fleetgate only (nginx needed 1.1 GiB and 7 s for 10,000; Caddy 28 s
    # to serve them all). Every name is not probed one by one (100,000 handshakes would add a
    # minute): 10,000 random ones are.
    many = [sni_name(i) for i in range(SNI_MAX)]
    big_ready = results.row("5c", f"{SNI_MAX:,} certs: start to serving (s)", "s", higher_is_better=False,
                            target="< 5 s and < 500 MiB",
                            target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") < 5.0
                            and r.rss.get("fleetgate", 1 << 60) < 500 * MiB)
    hs_10k = hs_row.value("fleetgate")
    big_hs = results.row("5d", f"{SNI_MAX:,} certs: handshakes/s, random SNI", "hs/s", higher_is_better=True,
                         target="≥ 0.95 × 5b (no worse than 10,000, within noise)",
                         target_fn=lambda r: r.value("fleetgate") is not None and hs_10k is not None
                         and r.value("fleetgate") >= 0.95 * hs_10k)
    for server in ("nginx", "caddy"):
        big_ready.skip(server, f"not measured with {SNI_MAX:,} (fleetgate's own target)")
        big_hs.skip(server, f"not measured with {SNI_MAX:,} (fleetgate's own target)")
    check = [many[0], many[-1]] + rng.sample(many[1:-1], 9_998)
    measure(args, "fleetgate", base, many, check, rng, big_ready, big_hs)


def measure(args, server, base, names, check, rng, ready_row, hs_row):
    """One server with a site per name in `names`: seconds from start until a 200-name sample is
    served (then every name of `check` verified), and handshakes/s over random SNI of `names`."""
    cafile = os.path.join(base, "ca.pem")
    ctx = verifying_tls(cafile)
    count = len(names)
    d = tempfile.mkdtemp(prefix=f"{server}-s5-", dir=procs.TMP)
    http, https = free_port(), free_port()
    sample = [names[0], names[-1]] + rng.sample(names[1:-1], 198)
    wait_quiet(args.wait_quiet)
    other = OtherLoad()
    proc = SNI_STARTERS[server](d, http, https, base, count)
    t0 = proc.bench_started
    log(f"scenario 5 {server} ({count:,} sites): waiting for a 200-name sample")
    served = wait_served(f"{server} to serve the sample", proc, https, ctx, sample,
                         deadline_s=60 if args.quick else 120)
    if len(served) < len(sample):
        rss = peak_rss(proc.pid)
        PROCS.stop(proc)
        why = (f"{server}: only {len(served)} of the {len(sample)}-name sample served "
               f"{time.monotonic() - t0:.0f} s after start; no time reported")
        log("  " + why)
        FAILURES.append(f"scenario 5 {server}")
        ready_row.set(server, None, rss, [why])
        hs_row.set(server, None, rss, [])
        return
    ready = max(served.values())
    ready_row.other[server], ready_row.kthreads[server] = other.split()
    t1 = time.monotonic()
    failed = probe_many(https, ctx, check)
    if failed:  # give stragglers a second chance, and say so
        time.sleep(1)
        failed2 = probe_many(https, ctx, failed)
    else:
        failed2 = []
    notes = []
    what = f"{len(check)} names" if len(check) == count else f"{len(check):,} random names of the {count:,}"
    verify_note = (f"{server}: served the 200-name sample {ready:.2f} s after start; "
                   f"then verified {what} in {time.monotonic() - t1:.1f} s")
    if failed:
        verify_note += f"; {len(failed)} failed at first, {len(failed2)} still failed 1 s later (e.g. {failed[:3]})"
    notes.append(verify_note)
    rss_ready = peak_rss(proc.pid)
    notes.append(f"{server}: after loading, peak RSS {rss_ready / MiB:.1f} MiB, current PSS "
                 f"{pss(proc.pid) / MiB:.1f} MiB (processes: {1 + sum(ppid_of(p) == proc.pid for p in all_pids())})")
    log(f"  {verify_note}; {notes[-1]}")
    log(f"scenario 5 {server}: random-SNI handshakes for {args.seconds} s")
    wait_quiet(args.wait_quiet)
    other = OtherLoad()
    rate, ok, bad, errs = sni_load(https, cafile, names, args.seconds)
    hs_row.other[server], hs_row.kthreads[server] = other.split()
    COMMANDS.comment(f"scenario 5 load: bench/run sni_load(), 2 processes x 8 threads of Python ssl, a new "
                     f"connection and full handshake per request (no session reuse), random SNI over "
                     f"{count:,} names, certificate verified, {args.seconds} s")
    rss = peak_rss(proc.pid)
    alive = proc.poll() is None
    PROCS.stop(proc)
    hs_notes = []
    if bad:
        hs_notes.append(f"{server}: {bad} of {ok + bad} random-SNI handshakes failed ({errs[:1]})")
    if not alive:
        hs_notes.append(f"{server} died during the run")
    value = ready if not failed2 else None
    if failed2:
        notes.append(f"{server}: not all names served; no time reported")
    ready_row.set(server, value, rss_ready, notes)
    hs_row.set(server, rate, rss, hs_notes)
    log(f"  {server}: {rate:.0f} handshakes/s ({ok} ok, {bad} failed), rss {rss / MiB:.1f} MiB")
