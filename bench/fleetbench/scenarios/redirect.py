"""Scenarios 1-3: the redirect site over HTTP keep-alive (1), HTTPS keep-alive (2) and HTTPS with a
new connection per request (3), in interleaved rounds, loaded with wrk."""

import re
import subprocess
import tempfile

from .. import procs
from ..base import MAIN, MiB, PATH_AND_QUERY, SERVERS, log
from ..load.wrk import wrk
from ..measure import OtherLoad, peak_rss, wait_quiet
from ..probes import http_get, insecure_tls
from ..procs import PROCS, free_port, wait_until
from ..report import CONFIGS, remember_config
from ..rounds import interleaved, median_run, pair_rounds
from ..servers import caddy, fleetgate, nginx

STARTERS = {"fleetgate": fleetgate.start_redirect, "nginx": nginx.start_redirect, "caddy": caddy.start_redirect}


def tls_params(port, sni="localhost"):
    """Protocol, cipher suite and key exchange group a default OpenSSL client gets."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni, "-brief"]
    try:
        out = subprocess.run(argv, input="", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=10).stdout
    except subprocess.TimeoutExpired:
        return "s_client timed out"
    found = []
    for key in ("Protocol version", "Ciphersuite", "Peer signature type", "Server Temp Key",
                "Negotiated TLS1.3 group"):
        m = re.search(rf"^{key}: (.*)$", out, re.M)
        if m:
            found.append(m.group(1).strip())
    return ", ".join(found) or out.strip().splitlines()[-1:]


def check_redirect(status, headers, who):
    loc = headers.get("location", "")
    if status != 301 or loc != MAIN + PATH_AND_QUERY:
        raise RuntimeError(f"{who}: expected 301 to {MAIN + PATH_AND_QUERY}, got {status} {loc!r}")
    return True


def run(args, cert, key, results, only):
    cases = [
        ("1", "HTTP redirect, keep-alive", "http", ()),
        ("2", "HTTPS redirect, keep-alive", "https", ()),
        ("3", "HTTPS new connection per request", "https", ("Connection: close",)),
    ]
    for sid, title, scheme, headers in cases:
        if sid not in only:
            continue
        row = results.row(sid, title, "req/s", higher_is_better=True,
                          target="≥ 1.0 × nginx", target_fn=lambda r: r.ratio("nginx") is not None and r.ratio("nginx") >= 1.0)
        measure(args, row, sid, scheme, headers, cert, key, args.rounds, args.seconds, tls_note=sid == "2")


def measure(args, row, sid, scheme, headers, cert, key, rounds, seconds, tls_note=False):
    """Every server in `rounds` interleaved rounds, each on a freshly started redirect server loaded
    by wrk for `seconds`; sets the row (each server's median round, paired ratios). Scenario 9
    uses it with its own certificates. tls_note: note what TLS wrk negotiates (first round)."""
    runs = {server: [] for server in SERVERS}
    for rnd, server in interleaved(rounds):
        d = tempfile.mkdtemp(prefix=f"{server}-s{sid}-r{rnd}-", dir=procs.TMP)
        http, https = free_port(), free_port()
        proc = STARTERS[server](d, http, https, cert, key)
        port = http if scheme == "http" else https
        remember_config(CONFIGS, server, d)
        tls = insecure_tls() if scheme == "https" else None
        wait_until(f"{server} to redirect on {scheme}", proc,
                   lambda: check_redirect(*http_get(port, "localhost", PATH_AND_QUERY, tls=tls), server))
        url = f"{scheme}://localhost:{port}{PATH_AND_QUERY}"
        if tls_note and rnd == 0:
            row.notes.append(f"{server}: TLS as wrk negotiates it (openssl s_client, no ALPN): {tls_params(port)}")
        if args.warmup:
            wrk(url, args.warmup, headers=headers, record=False)
        log(f"scenario {sid} {server} (round {rnd + 1}/{rounds}): wrk {seconds} s")
        wait_quiet(args.wait_quiet)
        other = OtherLoad()
        r = wrk(url, seconds, headers=headers)
        r["other"] = other.split()
        rss = peak_rss(proc.pid)
        alive = proc.poll() is None
        PROCS.stop(proc)
        notes = []
        if not alive:
            notes.append(f"{server} died during the run (log {proc.bench_log})")
        if r["non_2xx_3xx"]:
            notes.append(f"{server}: {r['non_2xx_3xx']} non-2xx/3xx responses")
        if r["errors"]:
            notes.append(f"{server}: wrk socket errors {r['errors']}")
        if r["requests"] == 0:
            notes.append(f"{server}: wrk completed no request")
        runs[server].append((r, rss, notes))
        log(f"  {server}: {r['rps']:.0f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms, "
            f"rss {rss / MiB:.1f} MiB{'; ' + '; '.join(notes) if notes else ''}")
    for server in SERVERS:
        r, rss, notes = median_run(server, runs[server])
        row.other[server], row.kthreads[server] = r["other"]
        row.set(server, r["rps"], rss, notes, detail=r)
    pair_rounds(row, runs)
