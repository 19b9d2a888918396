"""Scenario 8 (issue 12): 10,000 sites in the fleet's registry, added through the admin API.
A first node takes them (`POST /v1/sites`, each a redirect site with two domains and a certificate
from the built-in CA) and issues their certificates; `GET /v1/sites` is read page by page. Then a
fresh node starts on the same store with no local registry cache (as a new node joining the fleet)
and the figure is the seconds from its start until a 200-name sample (first, last and 198 random
sites) has each completed a verified handshake and request over HTTPS. fleetgate only: neither
nginx nor Caddy has a shared site registry."""

import concurrent.futures
import http.client
import json
import os
import random
import subprocess
import tempfile
import time

from .. import procs
from ..base import FLEETGATE, MiB, log
from ..measure import peak_rss
from ..probes import verifying_tls, wait_served
from ..procs import PROCS, free_port, wait_until

COUNT = 10_000
DOMAIN = "reg.test"
TARGET_S = 5.0
WRITERS = 4


def site_name(i):
    return f"s{i:05d}.{DOMAIN}"


def config(d, store, admin):
    path = os.path.join(d, "fleetgate.toml")
    with open(path, "w") as f:
        f.write(f'[listen]\nhttp = "127.0.0.1:{free_port()}"\nhttps = "127.0.0.1:{free_port()}"\n\n'
                f'[storage]\nkind = "dir"\npath = "{store}"\n\n[log]\nlevel = "warn"\n\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    return path


def https_port(cfg):
    with open(cfg) as f:
        for line in f:
            if line.startswith("https = "):
                return int(line.rsplit(":", 1)[1].strip().strip('"'))
    raise RuntimeError(f"no https port in {cfg}")


def api(conn, method, path, body=None):
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data


def add_sites(admin, numbers):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
    try:
        for i in numbers:
            name = site_name(i)
            status, data = api(conn, "POST", "/v1/sites", {
                "domains": [name, "www." + name], "tls": "internal", "https_redirect": False,
                "redirect": {"to": f"https://target{i}.example/", "status": 301}})
            if status != 201:
                raise RuntimeError(f"POST /v1/sites for {name}: {status} {data[:300]!r}")
    finally:
        conn.close()


def read_pages(admin):
    """Every site through `GET /v1/sites?limit=1000`, following next_cursor: (ids, pages)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
    ids, pages, cursor = set(), 0, None
    try:
        while True:
            status, data = api(conn, "GET", "/v1/sites?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
            if status != 200:
                raise RuntimeError(f"GET /v1/sites: {status} {data[:300]!r}")
            body = json.loads(data)
            pages += 1
            ids.update(site["id"] for site in body["sites"])
            cursor = body.get("next_cursor")
            if not cursor:
                return ids, pages
    finally:
        conn.close()


def valid_certificates(cfg):
    out = subprocess.run([FLEETGATE, "certs", "--json", "--config", cfg], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        return 0
    certs = json.loads(out.stdout)
    rows = certs if isinstance(certs, list) else certs.get("certificates", [])
    return sum(1 for c in rows if c.get("state") == "valid")


def run(args, results):
    row = results.row("8", f"{COUNT:,} registry sites: a new node's start to serving (s)", "s",
                      higher_is_better=False, target=f"< {TARGET_S:.0f} s",
                      target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") < TARGET_S)
    row.skip("nginx", "has no shared site registry")
    row.skip("caddy", "has no shared site registry")
    d = tempfile.mkdtemp(prefix="fleetgate-s8-", dir=procs.TMP)
    store = os.path.join(d, "store")
    admin = free_port()
    first_cfg = config(os.path.join(d), store, admin)
    first = PROCS.start("fleetgate", [FLEETGATE, "run", "--config", first_cfg], os.path.join(d, "first.log"))
    wait_until("the first node's admin API", first, lambda: read_pages(admin) is not None)
    log(f"scenario 8: adding {COUNT:,} sites through the admin API ({WRITERS} connections)")
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WRITERS) as ex:
        list(ex.map(lambda w: add_sites(admin, range(w, COUNT, WRITERS)), range(WRITERS)))
    added_s = time.monotonic() - t
    t = time.monotonic()
    ids, pages = read_pages(admin)
    paged_s = time.monotonic() - t
    if len(ids) != COUNT:
        raise RuntimeError(f"GET /v1/sites paged {len(ids)} sites, expected {COUNT}")
    log(f"  added in {added_s:.1f} s ({COUNT / added_s:,.0f} sites/s); paged in {pages} pages, {paged_s:.2f} s")
    t = time.monotonic()
    deadline = t + (900 if not args.quick else 600)
    issued = 0
    while issued < COUNT:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the first node issued {issued} of {COUNT} certificates in {time.monotonic() - t:.0f} s")
        if first.poll() is not None:
            raise RuntimeError(f"the first node exited; log {first.bench_log}")
        time.sleep(2)
        issued = valid_certificates(first_cfg)
    issued_s = time.monotonic() - t
    log(f"  {COUNT:,} certificates from the built-in CA in {issued_s:.0f} s")
    PROCS.stop(first)
    caches = [os.path.join(root, f) for root, _, files in os.walk(store) for f in files if f == "registry.json"]
    for cache in caches:
        os.remove(cache)
    ca = os.path.join(d, "ca.pem")
    with open(ca, "w") as f:
        subprocess.run([FLEETGATE, "ca", "export", "--config", first_cfg], stdout=f, check=True, timeout=60)
    names = [site_name(i) for i in range(COUNT)]
    sample = [names[0], names[-1]] + random.Random(8).sample(names, 198)
    second_dir = tempfile.mkdtemp(prefix="fleetgate-s8-new-", dir=procs.TMP)
    second_cfg = config(second_dir, store, free_port())
    second = PROCS.start("fleetgate", [FLEETGATE, "run", "--config", second_cfg], os.path.join(second_dir, "fleetgate.log"))
    log("scenario 8: a new node, no registry cache: waiting for a 200-name sample")
    served = wait_served("the new node to serve the sample", second, https_port(second_cfg), verifying_tls(ca),
                         sample, deadline_s=120)
    rss = peak_rss(second.pid)
    PROCS.stop(second)
    if len(served) < len(sample):
        row.notes.append(f"fleetgate: only {len(served)} of the {len(sample)}-name sample served within 120 s")
        return
    row.set("fleetgate", max(served.values()), rss, [
        f"{COUNT:,} sites (2 domains each) added through POST /v1/sites on {WRITERS} keep-alive connections "
        f"in {added_s:.1f} s ({COUNT / added_s:,.0f} sites/s, dir store); GET /v1/sites read them in {pages} "
        f"pages of 1000 in {paged_s:.2f} s; the first node's built-in CA issued their {COUNT:,} certificates "
        f"in {issued_s:.0f} s",
        f"the new node (same store, its registry cache {'deleted' if caches else 'absent'}): the sample's "
        f"first name served {min(served.values()):.2f} s after start, the last {max(served.values()):.2f} s "
        f"(reported), peak RSS {rss / MiB:.1f} MiB"])
