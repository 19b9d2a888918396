"""Scenario 4's upstream: one nginx (1 worker) answering every path with 200 "ok" and a mark
header, shared by the three proxies; its stub_status counts connections and requests, and its
/__seen echoes the forwarding fields a proxy sent."""

import re
import urllib.request

from ..probes import http_get
from . import nginx

UPSTREAM_BODY = "ok"
UPSTREAM_MARK = "x-bench-upstream"  # the upstream adds it: proves the answer came through the proxy
# The upstream's /__seen echoes the forwarding fields it received in this response header.
SEEN_HEADER = "x-bench-seen"
FORWARDING_FIELDS = ["xff", "proto", "host", "forwarded", "via"]


def start(d, port):
    """nginx, 1 worker (the proxies get the rest of the 2 cores), `return 200 "ok"` on every path."""
    conf = nginx.nginx_conf(d, [
        f"server {{\n    listen 127.0.0.1:{port} default_server;\n    server_name _;\n"
        f"    add_header {UPSTREAM_MARK} 1 always;\n"
        f"    location = /__status {{ stub_status; }}\n"
        f"    location = /__seen {{\n        add_header {SEEN_HEADER} \"xff=$http_x_forwarded_for|proto=$http_x_forwarded_proto"
        f"|host=$http_x_forwarded_host|forwarded=$http_forwarded|via=$http_via\" always;\n"
        f"        return 200 \"{UPSTREAM_BODY}\";\n    }}\n"
        f"    location / {{\n        default_type text/plain;\n        return 200 \"{UPSTREAM_BODY}\";\n    }}\n}}\n"])
    with open(conf) as f:
        text = f.read().replace("worker_processes 2;", "worker_processes 1;", 1)
    with open(conf, "w") as f:
        f.write(text)
    return nginx.start(d, conf)


def counts(port):
    """(connections accepted, requests) so far by the upstream, from its stub_status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__status", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)
    if not m:
        raise RuntimeError(f"upstream stub_status: unexpected {text!r}")
    return int(m.group(1)), int(m.group(3))


def check_proxied(port, who, tls=None):
    status, headers = http_get(port, "localhost", "/", tls=tls)
    if status != 200 or UPSTREAM_MARK not in headers:
        raise RuntimeError(f"{who}: expected 200 from the upstream (with {UPSTREAM_MARK}), got {status} "
                           f"{sorted(headers)}")
    return True


def forwarding_check(port, who):
    """The forwarding fields the upstream received through `who`, and Via on the way back; raises
    when one is missing (the configs would not be equivalent)."""
    status, headers = http_get(port, "localhost", "/__seen")
    seen = headers.get(SEEN_HEADER, "")
    fields = dict(part.partition("=")[::2] for part in seen.split("|"))
    missing = [f for f in FORWARDING_FIELDS if not fields.get(f)]
    if status != 200 or missing or not headers.get("via"):
        raise RuntimeError(f"{who}: the upstream did not get every forwarding field (missing {missing}, "
                           f"Via back {headers.get('via')!r}): {seen!r}")
    return f"{who}: upstream saw {seen}; client saw Via: {headers['via']}"
