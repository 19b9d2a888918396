"""Scenario 11 (issue 12; 11b, issue 16): 10,000 and 100,000 sites in the fleet's registry. Each
registry is made once per machine with `fleetgate sites import` (no node running; kept in
bench/.cache/registry-<count>/ like scenario 5's certificates) and copied for each run (hard
links: the dir store replaces a file by renaming a new one over it, so the cache is not changed;
the change journal, appended to in place, is left out). A node then starts on that store with no
local registry cache, as a new node joining the fleet does, and the figures are: seconds from its
start until a 200-name sample (first, last and 198 random sites) has each answered its redirect
over HTTP; reading every site through `GET /v1/sites` in pages of 1000; and, with the 10,000 in
place, how long one more site added through `POST /v1/sites` takes to be served. fleetgate only:
neither nginx nor Caddy has a shared site registry."""

import concurrent.futures
import http.client
import json
import os
import random
import shutil
import tempfile
import time

from .. import procs
from ..base import CACHE, FLEETGATE, MiB, log
from ..measure import peak_rss
from ..probes import http_get
from ..procs import PROCS, free_port, run_cmd, tail, wait_until

COUNT = 10_000
BIG = 100_000
DOMAIN = "reg.test"
TARGET_S = 5.0
TARGET_MIB = 500
SCENARIO = "11"


def site_name(i):
    return f"s{i:05d}.{DOMAIN}"


def site(i):
    # tls "internal": the built-in CA (no CA to reach); the figures are about the registry, over
    # plain HTTP, while the node issues the certificates in the background.
    return {"domains": [site_name(i), "www." + site_name(i)], "tls": "internal", "https_redirect": False,
            "redirect": {"to": f"https://target{i}.example/", "status": 301}}


def config(d, store, http, admin):
    path = os.path.join(d, "fleetgate.toml")
    with open(path, "w") as f:
        f.write(f'[listen]\nhttp = "127.0.0.1:{http}"\nhttps = "127.0.0.1:{free_port()}"\n\n'
                f'[storage]\nkind = "dir"\npath = "{store}"\n\n[log]\nlevel = "warn"\n\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    return path


def seeded_store(count):
    """The cached registry's store of `count` sites (made the first time: `fleetgate sites
    import`); the seconds the import took, from its marker."""
    base = os.path.join(CACHE, f"registry-{count}")
    store, marker = os.path.join(base, "store"), os.path.join(base, "complete")
    if not os.path.exists(marker):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        sites = os.path.join(base, "sites.json")
        with open(sites, "w") as f:
            json.dump([site(i) for i in range(count)], f)
        cfg = config(base, store, free_port(), free_port())
        log(f"scenario {SCENARIO}: importing {count:,} sites into {store} (once per machine; "
            "about 6 s for 10,000, 80 s for 100,000: synced writes in batches to the directory store)")
        t = time.monotonic()
        run_cmd([FLEETGATE, "sites", "import", sites, "--config", cfg], timeout=3600)
        with open(marker, "w") as f:
            f.write(f"{time.monotonic() - t:.1f}\n")
    with open(marker) as f:
        return store, float(f.read().strip() or 0)


def redirects(port, name, timeout=2.0):
    status, headers = http_get(port, name, "/", timeout=timeout)
    return status == 301 and headers.get("location", "").startswith("https://target")


def wait_redirecting(proc, port, names, deadline_s):
    """Probes until every name has answered its redirect once; {name: seconds after start}."""
    t0, served = proc.bench_started, {}
    deadline = time.monotonic() + deadline_s

    def one(n):
        try:
            return (n, time.monotonic()) if redirects(port, n) else None
        except Exception:  # noqa: BLE001 - not yet
            return None
    while len(served) < len(names) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fleetgate exited ({proc.returncode}); log {proc.bench_log}:\n{tail(proc.bench_log)}")
        todo = [n for n in names if n not in served]
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            for r in ex.map(one, todo):
                if r:
                    served[r[0]] = r[1] - t0
        if len(served) < len(names):
            time.sleep(0.02)
    return served


def api(conn, method, path, body=None):
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def read_pages(admin):
    """Every site through `GET /v1/sites?limit=1000`, following next_cursor: (ids, pages)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    ids, pages, cursor = set(), 0, None
    try:
        while True:
            status, data = api(conn, "GET", "/v1/sites?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
            if status != 200:
                raise RuntimeError(f"GET /v1/sites: {status} {data[:300]!r}")
            body = json.loads(data)
            pages += 1
            ids.update(s["id"] for s in body["sites"])
            cursor = body.get("next_cursor")
            if not cursor:
                return ids, pages
    finally:
        conn.close()


def copy_store(cached, store):
    """`cached` to `store` by hard links, the change journal left out (see the module docs)."""
    def link(src, dst):
        os.link(src, dst)
    shutil.copytree(cached, store, copy_function=link,
                    ignore=shutil.ignore_patterns("changes.log*", "registry.json", "*.mutex"))


def run(args, results):
    row = results.row(SCENARIO, f"{COUNT:,} registry sites: a new node's start to serving (s)", "s",
                      higher_is_better=False, target=f"< {TARGET_S:.0f} s",
                      target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") < TARGET_S)
    big = results.row(SCENARIO + "b", f"{BIG:,} registry sites: a new node's start to serving (s)", "s",
                      higher_is_better=False, target=f"< {TARGET_S:.0f} s and < {TARGET_MIB} MiB",
                      target_fn=lambda r: r.value("fleetgate") is not None and r.value("fleetgate") < TARGET_S
                      and r.rss.get("fleetgate", 1 << 60) < TARGET_MIB * MiB)
    for r in (row, big):
        r.skip("nginx", "has no shared site registry")
        r.skip("caddy", "has no shared site registry")
    measure(COUNT, row)
    measure(BIG, big)


def measure(count, row):
    """A new node on a registry of `count` sites: start to serving the sample, then the API."""
    cached, import_s = seeded_store(count)
    d = tempfile.mkdtemp(prefix=f"fleetgate-s{SCENARIO}-", dir=procs.TMP)
    store = os.path.join(d, "store")
    copy_store(cached, store)
    names = [site_name(i) for i in range(count)]
    sample = [names[0], names[-1]] + random.Random(11).sample(names[1:-1], 198)
    http_port, admin = free_port(), free_port()
    cfg = config(d, store, http_port, admin)
    proc = PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))
    log(f"scenario {SCENARIO}: a new node on a registry of {count:,} sites, no local cache: waiting for a 200-name sample")
    served = wait_redirecting(proc, http_port, sample, deadline_s=120)
    if len(served) < len(sample):
        rss = peak_rss(proc.pid)
        PROCS.stop(proc)
        row.notes.append(f"fleetgate: only {len(served)} of the {len(sample)}-name sample served within 120 s")
        row.set("fleetgate", None, rss, [])
        return
    # The admin listener is bound after the HTTP and HTTPS ones. (Not /v1/nodes: it reads the
    # status record of every certificate, 100,000 store reads at 11b.)
    wait_until("the admin API", proc,
               lambda: http_get(admin, "127.0.0.1", "/v1/sites?limit=1", timeout=30)[0] == 200, deadline_s=60)
    t = time.monotonic()
    ids, pages = read_pages(admin)
    paged_s = time.monotonic() - t
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    t = time.monotonic()
    status, data = api(conn, "POST", "/v1/sites", site(count))
    conn.close()
    if status != 201:
        raise RuntimeError(f"POST /v1/sites: {status} {data[:300]!r}")
    added = site_name(count)
    while time.monotonic() - t < 60:
        try:
            if redirects(http_port, added):
                break
        except Exception:  # noqa: BLE001 - not yet
            pass
        time.sleep(0.005)
    add_s = time.monotonic() - t
    rss = peak_rss(proc.pid)
    PROCS.stop(proc)
    if len(ids) < count:
        row.notes.append(f"fleetgate: GET /v1/sites listed {len(ids)} sites, expected {count}")
    row.set("fleetgate", max(served.values()), rss, [
        f"the registry: {count:,} sites (2 domains each) made once with `fleetgate sites import` in "
        f"{import_s:.0f} s (no node running; dir store, synced writes)",
        f"the new node: the sample's first name served {min(served.values()):.2f} s after start, the last "
        f"{max(served.values()):.2f} s (reported); GET /v1/sites read {len(ids):,} sites in {pages} pages of "
        f"1000 in {paged_s:.2f} s; one more site through POST /v1/sites served {add_s * 1000:.0f} ms after the "
        f"request was sent; peak RSS {rss / MiB:.1f} MiB (the node also issues the {count:,} certificates "
        "from its built-in CA meanwhile)"])
