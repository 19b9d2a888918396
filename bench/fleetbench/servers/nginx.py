"""nginx: the config (a shared head, one `server` block per site) and the starters for scenarios
1-3, 4 and 5. nginx has no ACME client, so no scenario 6."""

import os

from ..base import IDLE_CONNS, IDLE_KEEP_S, MAIN, PROXY_NAMES, REDIRECT_NAMES, SERVER_NOFILE, SNI_COUNT
from ..certs import sni_name
from ..procs import PROCS, which


NGINX_HEAD = """worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{main}events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # keep-alive means keep-alive: nginx's default closes a connection after 1000 requests
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 64;
"""


def nginx_conf(d, servers, idle=False):
    """idle: room for scenario 10's connections. Each worker may hold all of them (Linux hands
    accepted connections to the workers unevenly), with enough open files, and keeps an idle
    keep-alive connection IDLE_KEEP_S (the default is 75 s)."""
    main, conns, http = "", 8192, ""
    if idle:
        main = f"worker_rlimit_nofile {SERVER_NOFILE};\n"
        conns = IDLE_CONNS + IDLE_CONNS // 2
        http = f"    keepalive_timeout {IDLE_KEEP_S}s;\n"
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(NGINX_HEAD.format(d=d, main=main, conns=conns) + http + "".join(servers) + "}\n")
    return path


def nginx_server(listen, names, cert=None, key=None):
    tls = f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n" if cert else ""
    return (f"server {{\n    listen {listen};\n    server_name {' '.join(names)};\n{tls}"
            f"    return 301 {MAIN}$request_uri;\n}}\n")


def start_redirect(d, http, https, cert, key, idle=False):
    """Scenarios 1-3 and 8-9; idle: scenario 10 (see nginx_conf)."""
    conf = nginx_conf(d, [
        nginx_server(f"127.0.0.1:{http}", REDIRECT_NAMES),
        # nginx 1.22 spells "http2 on" as a listen parameter
        nginx_server(f"127.0.0.1:{https} ssl http2", REDIRECT_NAMES, cert, key),
    ], idle=idle)
    return start(d, conf)


def start(d, conf):
    return PROCS.start("nginx", [which("nginx"), "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                       os.path.join(d, "nginx.out"), nofile=SERVER_NOFILE)


def start_proxy(d, http, https, cert, key, upstream, idle_pool=64):
    """Scenario 4 (plain HTTP) and 8 (HTTPS with h2 on the https port). idle_pool: the idle
    upstream connections each worker keeps (`keepalive`)."""
    conf = nginx_conf(d, [
        f"upstream bench_upstream {{\n    server 127.0.0.1:{upstream};\n    keepalive {idle_pool};\n"
        f"    keepalive_requests 1000000;\n}}\n"
        f"server {{\n    listen 127.0.0.1:{http};\n    listen 127.0.0.1:{https} ssl http2;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
        f"    server_name {' '.join(PROXY_NAMES)};\n"
        f"    location / {{\n        proxy_pass http://bench_upstream;\n        proxy_http_version 1.1;\n"
        f"        proxy_set_header Connection \"\";\n        proxy_set_header Host $http_host;\n"
        # what fleetgate sends by default
        f"        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        f"        proxy_set_header X-Forwarded-Proto $scheme;\n"
        f"        proxy_set_header X-Forwarded-Host $http_host;\n"
        f"        proxy_set_header Forwarded \"for=$remote_addr;host=$http_host;proto=$scheme\";\n"
        f"        proxy_set_header Via \"1.1 nginx\";\n"
        f"        add_header Via \"1.1 nginx\";\n    }}\n}}\n"])
    return start(d, conf)


def start_sni(d, http, https, base, count=SNI_COUNT):
    """Scenario 5: `count` sites, the first names of the certificate cache `base`."""
    certs = os.path.join(base, "certs")
    servers = [nginx_server(f"127.0.0.1:{https} ssl http2", [sni_name(i)],
                            os.path.join(certs, f"{sni_name(i)}.pem"), os.path.join(certs, f"{sni_name(i)}.key"))
               for i in range(count)]
    return start(d, nginx_conf(d, servers))
