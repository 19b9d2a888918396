"""Scenario 6's ACME CA: a fresh Pebble and pebble-challtestsrv (DNS only) per server."""

import json
import os
import socket
import urllib.request

from ..certs import openssl_ca, openssl_leaf
from ..probes import verifying_tls
from ..procs import COMMANDS, PROCS, free_port, free_tcp_udp_port, wait_until, which


def start(d, http_port, tls_port):
    """challtestsrv (DNS only: every name resolves to 127.0.0.1) and a fresh Pebble whose VA
    validates on `http_port`/`tls_port`. Returns (directory URL, listener CA, issuing root, procs)."""
    pca, pca_key = openssl_ca(d, "pebble-listener")
    pcert, pkey = openssl_leaf(d, "pebble-listener", pca, pca_key, ["localhost"], ["127.0.0.1"])
    dns, cts_mgmt = free_tcp_udp_port(), free_port()
    listen, mgmt = free_port(), free_port()
    cts = PROCS.start("pebble-challtestsrv", [
        which("pebble-challtestsrv"), "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{cts_mgmt}",
        "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], os.path.join(d, "challtestsrv.log"))
    pebble_cfg = os.path.join(d, "pebble.json")
    with open(pebble_cfg, "w") as f:
        json.dump({"pebble": {
            "listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": pcert, "privateKey": pkey, "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}, f, indent=1)
    pebble = PROCS.start("pebble", [which("pebble"), "-config", pebble_cfg, "-dnsserver", f"127.0.0.1:{dns}"],
                         os.path.join(d, "pebble.log"), cwd=d,
                         env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})
    pctx = verifying_tls(pca)

    def get(url):
        with urllib.request.urlopen(url, context=pctx, timeout=3) as r:
            return r.read()
    wait_until("pebble's directory", pebble, lambda: get(f"https://127.0.0.1:{listen}/dir"))
    wait_until("challtestsrv", cts, lambda: socket.create_connection(("127.0.0.1", cts_mgmt), 1).close() or True)
    root = os.path.join(d, "pebble-root.pem")
    with open(root, "wb") as f:
        f.write(get(f"https://127.0.0.1:{mgmt}/roots/0"))
    COMMANDS.record(["curl", "--cacert", pca, f"https://127.0.0.1:{mgmt}/roots/0"])
    return f"https://127.0.0.1:{listen}/dir", pca, root, [pebble, cts]
