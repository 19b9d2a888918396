"""fleetgate: the TOML config and the starters for scenarios 1-3 (redirect), 4 (proxy), 5 (10,000
certificates), 6 (ACME from Pebble) and 7 (a node of a three-node fleet)."""

import json
import os

from ..base import FLEETGATE, MAIN, PROXY_NAMES, REDIRECT_NAMES, SNI_COUNT
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
    # metrics (or FLEETBENCH_METRICS=1): the admin listener on, so the Prometheus recorder and the
    # request-path metrics run (they are off without [admin]). Scenario 7 measures both ways.
    if metrics is None:
        metrics = os.environ.get("FLEETBENCH_METRICS") == "1"
    if metrics:
        extra += f'\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
    path = os.path.join(d, "fleetgate.toml")
    with open(path, "w") as f:
        f.write((f'node = "{node}"\n' if node else "")
                + f'[listen]\nhttp = "127.0.0.1:{http}"\nhttps = "127.0.0.1:{https}"\n\n'
                f'[storage]\nkind = "dir"\npath = "{store or os.path.join(d, "store")}"\n\n'
                f'[log]\nlevel = "{level}"\n\n{extra}\n' + "\n".join(sites))
    return path


def start_redirect(d, http, https, cert, key, metrics=None):
    site = fleetgate_site(REDIRECT_NAMES, cert, key, FG_REDIRECT, https_redirect=False)
    cfg = fleetgate_config(d, http, https, [site], metrics=metrics)
    return PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))


def start_proxy(d, http, https, cert, key, upstream, metrics=None):
    site = fleetgate_site(PROXY_NAMES, cert, key, f'proxy = {{ upstreams = ["http://127.0.0.1:{upstream}"] }}',
                          https_redirect=False)
    cfg = fleetgate_config(d, http, https, [site], metrics=metrics)
    return PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))


def start_sni(d, http, https, base):
    certs = os.path.join(base, "certs")
    sites = [fleetgate_site([sni_name(i)], os.path.join(certs, f"{sni_name(i)}.pem"),
                            os.path.join(certs, f"{sni_name(i)}.key"), FG_REDIRECT)
             for i in range(SNI_COUNT)]
    cfg = fleetgate_config(d, http, https, sites)
    return PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))


def start_acme(d, http, https, directory, ca_root, names):
    sites = [fleetgate_site([n], None, None, FG_REDIRECT) for n in names]
    acme = f'[acme]\ndirectory = "{directory}"\nca_root = "{ca_root}"\nchallenges = ["http-01"]\n'
    cfg = fleetgate_config(d, http, https, sites, extra=acme)
    return PROCS.start("fleetgate", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))


def start_fleet_node(d, http, https, cert, key, store, node):
    """One node of scenario 7's fleet: the redirect site, the store `store` shared with the other
    nodes (TLS ticket keys included), logging at info (the ticket keys in use are waited on)."""
    site = fleetgate_site(REDIRECT_NAMES, cert, key, FG_REDIRECT)
    cfg = fleetgate_config(d, http, https, [site], store=store, node=node, level="info")
    return PROCS.start(f"fleetgate-{node}", [FLEETGATE, "run", "--config", cfg], os.path.join(d, "fleetgate.log"))
