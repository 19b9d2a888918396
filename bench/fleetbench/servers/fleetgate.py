"""fleetgate: the TOML config and the starters for scenarios 1-3 and 8-10 (redirect), 4 and 8 (proxy),
5 (10,000 certificates), 6 (ACME from Pebble) and 12 (a node of a three-node fleet)."""

import json
import os

from ..base import (FLEETGATE, IDLE_CONNS, IDLE_KEEP_S, MAIN, PROXY_NAMES, REDIRECT_NAMES, SERVER_NOFILE,
                    SNI_COUNT)
from ..certs import sni_name
from ..procs import PROCS, free_port


def fleetgate_site(domains, cert, key, action, https_redirect=None):
    lines = ["[[site]]", f"domains = {json.dumps(domains)}", action]
    if cert:
        lines.append(f'tls = {{ cert = "{cert}", key = "{key}" }}')
    if https_redirect is not None:
        lines.append(f"https_redirect = {'true' if https_redirect else 'false'}")
    return "\n".join(lines) + "\n"


FG_REDIRECT = f'redirect = {{ to = "{MAIN}", status = 301, keep_path = true }}'


def fleetgate_config(d, http, https, sites, extra="", metrics=None, store=None, node=None, level="warn"):
    # FLEETBENCH_WORKERS=N: `listen.workers = N` (default: fleetgate's, one per core).
    # metrics (or FLEETBENCH_METRICS=1): the admin listener on, so the Prometheus recorder and the
    # request-path metrics run (they are off without [admin]). Scenario 7 measures both ways.
    if metrics is None:
        metrics = os.environ.get("FLEETBENCH_METRICS") == "1"
    if metrics:
        extra += f'\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
    path = os.path.join(d, "fleetgate.toml")
    with open(path, "w") as f:
        f.write((f'node = "{node}"\n' if node else "")
                + f'[listen]\nhttp = "127.0.0.1:{http}"\nhttps = "127.0.0.1:{https}"\n'
                + (f'workers = {os.environ["FLEETBENCH_WORKERS"]}\n' if os.environ.get("FLEETBENCH_WORKERS") else "") + '\n'
                f'[storage]\nkind = "dir"\npath = "{store or os.path.join(d, "store")}"\n\n'
                f'[log]\nlevel = "{level}"\n\n{extra}\n' + "\n".join(sites))
    return path


# Scenario 10: room for IDLE_CONNS connections (the default max_connections is 10,000: the
# scenario's own readiness probes would wait at the limit), and an idle HTTP/1.1 keep-alive
# connection kept IDLE_KEEP_S (header_read_timeout also bounds the wait for the next request head
# and closes an idle HTTP/1.1 connection after 10 s by default; idle_timeout's default is 60 s).
FG_IDLE_LIMITS = (f'[limits]\nmax_connections = {IDLE_CONNS * 2}\n'
                  f'header_read_timeout = "{IDLE_KEEP_S}s"\nidle_timeout = "{IDLE_KEEP_S}s"\n')


def start(d, cfg):
    return PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"),
                       nofile=SERVER_NOFILE)


def start_redirect(d, http, https, cert, key, metrics=None, idle=False):
    """Scenarios 1-3, 7 and 8-9; idle: scenario 10 (FG_IDLE_LIMITS)."""
    site = fleetgate_site(REDIRECT_NAMES, cert, key, FG_REDIRECT, https_redirect=False)
    cfg = fleetgate_config(d, http, https, [site], extra=FG_IDLE_LIMITS if idle else "", metrics=metrics)
    return start(d, cfg)


def start_proxy(d, http, https, cert, key, upstream, metrics=None):
    site = fleetgate_site(PROXY_NAMES, cert, key, f'proxy = {{ upstreams = ["http://127.0.0.1:{upstream}"] }}',
                          https_redirect=False)
    cfg = fleetgate_config(d, http, https, [site], metrics=metrics)
    return start(d, cfg)


def start_sni(d, http, https, base, count=SNI_COUNT):
    """Scenario 5: `count` sites, the first names of the certificate cache `base`."""
    certs = os.path.join(base, "certs")
    sites = [fleetgate_site([sni_name(i)], os.path.join(certs, f"{sni_name(i)}.pem"),
                            os.path.join(certs, f"{sni_name(i)}.key"), FG_REDIRECT)
             for i in range(count)]
    cfg = fleetgate_config(d, http, https, sites)
    return start(d, cfg)


def start_acme(d, http, https, directory, ca_root, names):
    sites = [fleetgate_site([n], None, None, FG_REDIRECT) for n in names]
    acme = f'[acme]\ndirectory = "{directory}"\nca_root = "{ca_root}"\nchallenges = ["http-01"]\n'
    cfg = fleetgate_config(d, http, https, sites, extra=acme)
    return start(d, cfg)


def start_fleet_node(d, http, https, cert, key, store, node):
    """One node of scenario 12's fleet: the redirect site, the store `store` shared with the other
    nodes (TLS ticket keys included), logging at info (the ticket keys in use are waited on)."""
    site = fleetgate_site(REDIRECT_NAMES, cert, key, FG_REDIRECT)
    cfg = fleetgate_config(d, http, https, [site], store=store, node=node, level="info")
    return PROCS.start(f"fleetgate-{node}", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))
