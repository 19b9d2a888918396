"""The command line: parses the flags, sets up, runs the chosen scenarios, prints the table and
writes RESULTS.md; stops every process and removes the temp dir on the way out."""

import argparse
import datetime
import os
import shutil
import signal
import sys
import tempfile
import time

from . import procs
from .base import REDIRECT_NAMES, RESULTS, log
from .certs import openssl_ca, openssl_leaf
from .install import build_fleetgate, install_missing
from .procs import PROCS, on_signal
from .report import FAILURES, OTHER_LOAD_WARN, Results, alarms, write_results
from .scenarios import acme, h2, idle, keys, metrics, proxy, redirect, registry, resume, sni


def main():
    ap = argparse.ArgumentParser(description="fleetgate vs nginx vs Caddy (issues 5, 14 and 16)")
    ap.add_argument("--quick", action="store_true", help="~3 s per load run, fewer servers in scenario 5")
    ap.add_argument("--seconds", type=int, help="seconds per load run (default 10, --quick 3)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/fleetgate as it is")
    ap.add_argument("--rounds", type=int,
                    help="interleaved rounds of scenarios 1-4 and 7, the median reported (default 5, --quick 1; "
                         "7 runs at least 2; 8 and 9 at most 3, 10 one)")
    ap.add_argument("--only", help="comma-separated scenarios to run, e.g. 1,2,5 or 8,9,10 (default all)")
    ap.add_argument("--results", help="where to write the results (default bench/RESULTS.md; "
                                      "a run with --only writes none unless given)")
    ap.add_argument("--keep-temp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--wait-quiet", type=float,
                    help="before each measurement, wait up to this many seconds for other processes to "
                         "use under 0.2 cores (default 30, --quick 0)")
    args = ap.parse_args()
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.warmup = 0 if args.quick else 1
    args.rounds = max(1, args.rounds or (1 if args.quick else 5))
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    only = set((args.only or "1,2,3,4,5,6,7,8,9,10,11,12").split(","))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = datetime.datetime.now().astimezone()
    t_start = time.monotonic()
    TMP = procs.TMP = tempfile.mkdtemp(prefix="fleetgate-bench-")
    results = Results()
    durations = {"build": 0.0}
    ok = False
    try:
        install_missing()
        if not args.no_build:
            t = time.monotonic()
            build_fleetgate()
            durations["build"] = time.monotonic() - t
        log(f"temp dir {TMP}")
        ca, ca_key = openssl_ca(TMP, "bench")
        cert, key = openssl_leaf(TMP, "bench", ca, ca_key, REDIRECT_NAMES + ["main.bench.test"])
        steps = [  # (the scenarios a step measures, the step); each step's duration is reported
            (("1", "2", "3"), lambda: redirect.run(args, cert, key, results, only)),
            (("4",), lambda: proxy.run(args, cert, key, results)),
            (("5",), lambda: sni.run(args, results)),
            (("6",), lambda: acme.run(args, results)),
            (("7",), lambda: metrics.run(args, cert, key, results)),
            (("8",), lambda: h2.run(args, cert, key, results)),
            (("9",), lambda: keys.run(args, results)),
            (("10",), lambda: idle.run(args, cert, key, results)),
            (("11",), lambda: registry.run(args, results)),
            (("12",), lambda: resume.run(args, ca, cert, key, results)),
        ]
        for sids, step in steps:
            chosen = [sid for sid in sids if sid in only]
            if not chosen:
                continue
            t = time.monotonic()
            step()
            durations[f"scenario {','.join(chosen)}"] = time.monotonic() - t
        durations["total"] = time.monotonic() - t_start
        print()
        print(results.table(markdown=False))
        print()
        for n in results.notes():
            print("  " + n)
        loud = alarms(results)
        if loud:
            print(f"\nWARNING: {len(loud)} note(s) report failed requests or a misbehaving server (marked !!):")
            for n in loud:
                print("  " + n)
        worst = max([c for r in results.rows for c in r.other.values()] or [0.0])
        if worst >= OTHER_LOAD_WARN:
            print(f"\nWARNING: other processes used up to {worst:.1f} cores during some measurements "
                  "(column 'other CPU', marked !)")
        out = args.results or (None if args.only else RESULTS)
        if out:
            write_results(args, results, started, durations, out)
        print("\nscenario durations: " + ", ".join(f"{k.split()[1]} {v:.0f} s" for k, v in durations.items()
                                                 if k.startswith("scenario")))
        print(f"\nrun took {durations['total']:.0f} s (build {durations['build']:.0f} s); "
              + (f"wrote {out}" if out else "partial run (--only): no results file written; pass --results PATH"))
        ok = True
    finally:
        t = time.monotonic()
        PROCS.stop_all()
        t_stop = time.monotonic() - t
        if args.keep_temp or not ok or FAILURES:
            log(f"temp dir kept: {TMP}")
        else:
            for _ in range(3):  # a killed server may still be finishing a write: try again
                shutil.rmtree(TMP, ignore_errors=True)
                if not os.path.exists(TMP):
                    break
                time.sleep(1)
            if os.path.exists(TMP):
                log(f"could not remove all of {TMP}")
        log(f"cleaned up (processes {t_stop:.1f} s, files {time.monotonic() - t - t_stop:.1f} s); "
            f"{time.monotonic() - t_start:.0f} s in all")


def entry():
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report, clean up (done in main), exit non-zero
        print(f"bench/run: {e}", file=sys.stderr)
        sys.exit(1)
