"""Paths, the names and counts every scenario uses, and the progress log. Imports nothing of the
package: every other module may import it."""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
CACHE = os.path.join(BENCH, ".cache")
FLEETGATE = os.path.join(ROOT, "target", "release", "fleetgate")
RESULTS = os.path.join(BENCH, "RESULTS.md")

# The names every server answers for in scenarios 1-3. wrk sends the URL's host as SNI and
# Host, and "localhost" is the one name that resolves to 127.0.0.1 here without touching
# /etc/hosts, so the redirect site answers for it.
REDIRECT_NAMES = ["localhost", "old.bench.test", "www.old.bench.test"]
MAIN = "https://main.bench.test"
PATH_AND_QUERY = "/some/page?x=1"
SNI_COUNT = 10_000
# Scenario 5's large fleet (5c, 5d: fleetgate only): the certificate cache holds this many, and the
# 10,000 of 5a/5b are its first ones.
SNI_MAX = 100_000
SNI_DOMAIN = "bench.test"
ACME_COUNT = 50
ACME_DOMAIN = "acme.test"
SERVERS = ["fleetgate", "nginx", "caddy"]
# Scenario 4: the proxy site answers for this name.
PROXY_NAMES = ["localhost"]
# Scenario 10: idle keep-alive TLS connections held open at once, and how long every server is
# configured to keep an idle one (well beyond the time the scenario takes to open them all).
IDLE_CONNS = 10_000
IDLE_KEEP_S = 300
# Open files each server may have (scenario 10's connections plus some): set as the child's
# RLIMIT_NOFILE, and nginx's worker_rlimit_nofile.
SERVER_NOFILE = 65_536

MiB = 1024 * 1024


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
