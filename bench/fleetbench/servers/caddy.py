"""Caddy: the JSON config and the starters for scenarios 1-3 and 8-10 (redirect), 4 and 8 (proxy),
5 and 6."""

import json
import os

from ..base import IDLE_KEEP_S, MAIN, PROXY_NAMES, REDIRECT_NAMES, SERVER_NOFILE, SNI_COUNT
from ..certs import sni_name
from ..procs import PROCS, which


def caddy_redirect_route(hosts=None):
    route = {"handle": [{"handler": "static_response", "status_code": 301,
                          "headers": {"Location": [MAIN + "{http.request.uri}"]}}]}
    if hosts:
        route["match"] = [{"host": hosts}]
    return route


def caddy_config(d, servers, load_files):
    cfg = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": os.path.join(d, "caddy-data")},
        "apps": {
            "http": {"servers": servers},
            "tls": {"certificates": {"load_files": load_files}},
        },
    }
    path = os.path.join(d, "caddy.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def start_caddy_cfg(d, path):
    env = {"HOME": d, "XDG_DATA_HOME": os.path.join(d, "data"), "XDG_CONFIG_HOME": os.path.join(d, "config")}
    return PROCS.start("caddy", [which("caddy"), "run", "--config", path], os.path.join(d, "caddy.log"),
                       env=env, nofile=SERVER_NOFILE)


def start_redirect(d, http, https, cert, key, idle=False):
    """idle: scenario 10; Caddy has no connection limit and keeps idle connections 5 minutes by
    default: the idle timeout is set to IDLE_KEEP_S all the same, as for the others."""
    servers = {
        "plain": {"listen": [f"127.0.0.1:{http}"], "protocols": ["h1"],
                  "automatic_https": {"disable": True},
                  "routes": [caddy_redirect_route(REDIRECT_NAMES)]},
        "tls": {"listen": [f"127.0.0.1:{https}"], "protocols": ["h1", "h2"],
                "automatic_https": {"disable": True},
                "tls_connection_policies": [{}],
                "routes": [caddy_redirect_route(REDIRECT_NAMES)]},
    }
    if idle:
        servers["tls"]["idle_timeout"] = f"{IDLE_KEEP_S}s"
    path = caddy_config(d, servers, [{"certificate": cert, "key": key}])
    return start_caddy_cfg(d, path)


def start_proxy(d, http, https, cert, key, upstream, idle_pool=64):
    """Scenario 4 (plain HTTP) and 8 (HTTPS, h1 and h2). idle_pool: the idle upstream connections
    kept (`max_idle_conns_per_host`)."""
    route = {"match": [{"host": PROXY_NAMES}],
             "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{upstream}"}],
                         # as many idle upstream connections as nginx's `keepalive` (default 32)
                         "transport": {"protocol": "http",
                                       "keep_alive": {"enabled": True, "max_idle_conns_per_host": idle_pool}},
                         # X-Forwarded-* are Caddy's defaults; Forwarded and Via as fleetgate sends them
                         "headers": {
                             "request": {"set": {
                                 "Forwarded": ["for={http.request.remote.host};host={http.request.host};"
                                               "proto={http.request.scheme}"],
                                 "Via": ["1.1 caddy"]}},
                             "response": {"set": {"Via": ["1.1 caddy"]}}}}]}
    # plain HTTP for scenario 4, HTTPS with h1 and h2 for scenario 8
    servers = {"plain": {"listen": [f"127.0.0.1:{http}"], "protocols": ["h1"],
                         "automatic_https": {"disable": True}, "routes": [route]},
               "tls": {"listen": [f"127.0.0.1:{https}"], "protocols": ["h1", "h2"],
                       "automatic_https": {"disable": True}, "tls_connection_policies": [{}],
                       "routes": [route]}}
    path = caddy_config(d, servers, [{"certificate": cert, "key": key}])
    return start_caddy_cfg(d, path)


def start_sni(d, http, https, base, count=SNI_COUNT):
    """Scenario 5: `count` sites, the first names of the certificate cache `base`."""
    certs = os.path.join(base, "certs")
    servers = {"tls": {"listen": [f"127.0.0.1:{https}"], "protocols": ["h1", "h2"],
                       "automatic_https": {"disable": True},
                       "tls_connection_policies": [{}],
                       "routes": [caddy_redirect_route()]}}
    files = [{"certificate": os.path.join(certs, f"{sni_name(i)}.pem"),
              "key": os.path.join(certs, f"{sni_name(i)}.key")} for i in range(count)]
    return start_caddy_cfg(d, caddy_config(d, servers, files))


def start_acme(d, http, https, directory, ca_root, names):
    servers = {"tls": {"listen": [f"127.0.0.1:{https}"], "protocols": ["h1", "h2"],
                       # no HTTP->HTTPS redirect server: certmagic answers HTTP-01 on bind_host:http_port
                       "automatic_https": {"disable_redirects": True},
                       "routes": [caddy_redirect_route(names)]}}
    cfg = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": os.path.join(d, "caddy-data")},
        "apps": {
            "http": {"http_port": http, "https_port": https, "servers": servers},
            "tls": {"automation": {"policies": [{
                "subjects": names,
                "issuers": [{"module": "acme", "ca": directory, "trusted_roots_pem_files": [ca_root],
                             "challenges": {"tls-alpn": {"disabled": True}, "bind_host": "127.0.0.1"}}],
            }]}},
        },
    }
    path = os.path.join(d, "caddy.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return start_caddy_cfg(d, path)
