"""HAProxy in front of several servers: TCP round robin per connection (TLS passes through), as
the balancer of a fleet (scenario 12)."""

import os

from ..procs import PROCS, which


def start_round_robin(d, port, backends):
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 1s\n"
                "  timeout client 30s\n  timeout server 30s\n\n"
                f"frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\n"
                "backend nodes\n  balance roundrobin\n"
                + "".join(f"  server n{i} 127.0.0.1:{b}\n" for i, b in enumerate(backends)))
    return PROCS.start("haproxy", [which("haproxy"), "-db", "-f", cfg], os.path.join(d, "haproxy.log"))
