"""Setup: missing Debian packages installed with apt-get, fleetgate built in release mode."""

import os
import shutil
import subprocess
import time

from .base import log
from .procs import run_cmd, which

PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx", "caddy": "caddy",
            "haproxy": "haproxy", "pebble": "pebble", "pebble-challtestsrv": "pebble", "openssl": "openssl"}


def install_missing():
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if not which(prog)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing {' '.join(missing)}; run as root to install them with apt-get")
    log(f"installing {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run_cmd(["apt-get", "update", "-q"], env=env, capture=False)
    run_cmd(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, capture=False)
    # Debian starts nginx/haproxy/caddy services on install where an init system runs; the
    # benchmark needs their ports and CPUs to itself.
    for svc in ("nginx", "haproxy", "caddy"):
        if svc in missing and shutil.which("service"):
            subprocess.run(["service", svc, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build_fleetgate():
    log("cargo build --release -p fleetgate")
    t0 = time.monotonic()
    run_cmd(["cargo", "build", "--release", "-p", "fleetgate"], capture=False)
    log(f"built in {time.monotonic() - t0:.1f} s")
