#!/usr/bin/env python3
"""HTTP/2 throughput of fleetgate against nginx (issue 16, goal 1), apart from bench/run.

Starts target/release/fleetgate and Debian's nginx (2 workers, `http2` on the ssl listener,
keepalive_requests 1000000) with the same ECDSA P-256 certificate, both answering
https://localhost:PORT/some/page?x=1 with a 301 (or, with --scenario proxy, proxying to one local
nginx upstream of 1 worker), and runs h2load against each in turn, alternating the servers for
--rounds rounds. Prints req/s, p99 (from h2load's per-request log) and fleetgate/nginx ratios.

Run it under the bench lock, after a release build:

    flock /work/bench.lock python3 bench/h2probe.py [--scenario redirect|proxy] [--rounds 3]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEETGATE = os.path.join(ROOT, "target", "release", "fleetgate")
MAIN = "https://main.bench.test"
LOADS = [("-c 16 -m 10", ["-c", "16", "-m", "10"]), ("-c 64 -m 100", ["-c", "64", "-m", "100"])]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, deadline=15.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open in {deadline} s")


def cert(d):
    key, pem = os.path.join(d, "leaf.key"), os.path.join(d, "leaf.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", pem, "-subj", "/CN=localhost", "-days", "2",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return pem, key


NGINX_HEAD = """worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
"""


def nginx(d, body, workers=2):
    os.makedirs(d, exist_ok=True)
    temps = "".join(f"    {t}_temp_path {d}/{t};\n" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_HEAD.format(d=d, workers=workers) + temps + body + "}\n")
    return subprocess.Popen(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "out.log"), "w"))


def start_nginx(d, port, pem, key, upstream):
    if upstream:
        action = (f"    location / {{\n        proxy_pass http://up;\n        proxy_http_version 1.1;\n"
                  f"        proxy_set_header Connection \"\";\n        proxy_set_header Host $http_host;\n"
                  f"        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                  f"        proxy_set_header X-Forwarded-Proto $scheme;\n"
                  f"        proxy_set_header X-Forwarded-Host $http_host;\n"
                  f"        proxy_set_header Forwarded \"for=$remote_addr;host=$http_host;proto=$scheme\";\n"
                  f"        proxy_set_header Via \"1.1 nginx\";\n        add_header Via \"1.1 nginx\";\n    }}\n")
        ups = f"upstream up {{\n    server 127.0.0.1:{upstream};\n    keepalive 64;\n    keepalive_requests 1000000;\n}}\n"
    else:
        action, ups = f"    return 301 {MAIN}$request_uri;\n", ""
    return nginx(d, ups + f"server {{\n    listen 127.0.0.1:{port} ssl http2;\n    server_name localhost;\n"
                    f"    ssl_certificate {pem};\n    ssl_certificate_key {key};\n{action}}}\n")


def start_upstream(d, port):
    return nginx(d, f"server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        default_type text/plain;\n"
                    f"        return 200 \"ok\";\n    }}\n}}\n", workers=1)


def start_fleetgate(binary, d, port, pem, key, upstream, extra):
    os.makedirs(d, exist_ok=True)
    action = (f'proxy = {{ upstreams = ["http://127.0.0.1:{upstream}"] }}' if upstream
              else f'redirect = {{ to = "{MAIN}", status = 301, keep_path = true }}')
    cfg = os.path.join(d, "fleetgate.toml")
    with open(cfg, "w") as f:
        f.write(f'[listen]\nhttp = "127.0.0.1:{free_port()}"\nhttps = "127.0.0.1:{port}"\n{extra}\n'
                f'[storage]\nkind = "dir"\npath = "{d}/store"\n\n[log]\nlevel = "warn"\n\n'
                f'[[site]]\ndomains = ["localhost"]\n{action}\ntls = {{ cert = "{pem}", key = "{key}" }}\n'
                f'https_redirect = false\n')
    return subprocess.Popen([binary, "run", "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "fleetgate.log"), "w"))


def h2load(port, args, seconds, log):
    out = subprocess.run(["h2load", *args, "-D", str(seconds), "--warm-up-time=1", f"--log-file={log}",
                          f"https://localhost:{port}/some/page?x=1"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    done = re.search(r"requests: .*? (\d+) succeeded, (\d+) failed", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not done or int(done.group(2)) or int(status.group(3)) or int(status.group(4)):
        raise RuntimeError(f"h2load against {port}: unexpected output\n{out}")
    lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.count("\t") >= 2)
    p99 = lat[int(len(lat) * 0.99)] / 1000.0 if lat else float("nan")  # µs -> ms
    os.unlink(log)
    return float(m.group(1)), p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["redirect", "proxy"], default="redirect")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--loads", default="0,1", help="which of: 0 = -c 16 -m 10, 1 = -c 64 -m 100")
    ap.add_argument("--fleetgate-extra", default="", help="extra lines for fleetgate's [listen] (e.g. workers = 2)")
    ap.add_argument("--fleetgate", default=FLEETGATE, help="the binary (default target/release/fleetgate)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    loads = [LOADS[int(i)] for i in a.loads.split(",")]
    d = tempfile.mkdtemp(prefix="h2probe-")
    procs = []
    try:
        pem, key = cert(d)
        upstream = None
        if a.scenario == "proxy":
            upstream = free_port()
            procs.append(start_upstream(os.path.join(d, "upstream"), upstream))
            wait_port(upstream, procs[-1])
        servers = {}
        for name, start in (("fleetgate", lambda p: start_fleetgate(a.fleetgate, os.path.join(d, "fg"), p, pem, key, upstream,
                                                                   a.fleetgate_extra.replace("\\n", "\n"))),
                            ("nginx", lambda p: start_nginx(os.path.join(d, "nginx"), p, pem, key, upstream))):
            port = free_port()
            procs.append(start(port))
            wait_port(port, procs[-1])
            servers[name] = port
        results = {(n, l): [] for n in servers for l, _ in loads}
        for r in range(a.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for label, args in loads:
                for name in order:
                    rps, p99 = h2load(servers[name], args, a.seconds, os.path.join(d, "h2load.log"))
                    results[(name, label)].append((rps, p99))
                    print(f"round {r + 1} {a.scenario} {label:<12} {name:<9} {rps:>10.0f} req/s  p99 {p99:7.2f} ms",
                          flush=True)
        print(f"\n{a.scenario}: median of {a.rounds} rounds, {a.seconds} s each")
        for label, _ in loads:
            fg = sorted(results[("fleetgate", label)])
            ng = sorted(results[("nginx", label)])
            ratios = [f / n for (f, _), (n, _) in zip(results[("fleetgate", label)], results[("nginx", label)])]
            med = lambda xs: sorted(xs)[len(xs) // 2]
            print(f"{label:<12} fleetgate {med([x for x, _ in fg]):>9.0f} req/s p99 {med([p for _, p in fg]):6.2f} ms | "
                  f"nginx {med([x for x, _ in ng]):>9.0f} req/s p99 {med([p for _, p in ng]):6.2f} ms | "
                  f"ratio per round {' '.join(f'{x:.2f}' for x in ratios)} (median {med(ratios):.2f})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if a.keep:
            print(f"kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
