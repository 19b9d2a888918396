"""Measuring from /proc: peak and proportional memory of a server, and the CPU other processes on
the machine use during a measurement (waiting for quiet before one)."""

import os
import time

from .base import log


def peak_rss(pid):
    """VmHWM of pid plus its children (nginx: master + workers), in bytes."""
    return _sum_kib(pid, "status", "VmHWM:")


def rss(pid):
    """Current VmRSS of pid plus its children (nginx: master + workers), in bytes."""
    return _sum_kib(pid, "status", "VmRSS:")


def pss(pid):
    """Current proportional set size of pid plus its children, in bytes: shared pages (nginx
    workers share the master's certificates copy-on-write) are split instead of counted twice."""
    return _sum_kib(pid, "smaps_rollup", "Pss:")


def _sum_kib(pid, fname, key):
    """The `key` line (in kB) of /proc/P/fname summed over pid and its children, in bytes."""
    total = 0
    for p in [pid] + [p for p in all_pids() if ppid_of(p) == pid]:
        try:
            with open(f"/proc/{p}/{fname}") as f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


# ---- other load on the machine ----------------------------------------------------------------
# These machines are shared: builds and tests of other sessions may run during a measurement.
# Each measurement reports how many cores processes outside this script's tree used meanwhile.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user + nice + system: irq/softirq time (loopback traffic of the benchmark itself) is charged
    # to no process, so it is left out on both sides of the subtraction
    return v[0] + v[1] + v[2]


def proc_times(pid):
    """utime + stime + cutime + cstime of pid (own and reaped children's), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])
    except (OSError, IndexError, ValueError):
        return 0


def own_cpu():
    """CPU of this script and every live descendant (servers, wrk, load clients), in ticks."""
    parents = {}
    for p in all_pids():
        parents[p] = ppid_of(p)
    me = os.getpid()
    total = proc_times(me)
    for p in parents:
        q, seen = parents.get(p), 0
        while q and q != me and q > 1 and seen < 64:
            q, seen = parents.get(q), seen + 1
        if q == me and p != me:
            # a live descendant's own time only: its reaped children are in its cutime already
            total += proc_times(p)
    return total


def kthreads_cpu():
    """CPU of kernel threads (children of kthreadd): I/O, fsync and network work charged to no
    user process, whoever caused it."""
    return sum(proc_times(p) for p in all_pids() if ppid_of(p) == 2)


class OtherLoad:
    """Cores used outside this script's process tree between start and cores(): by other user
    processes (other sessions' builds and tests), and by kernel threads."""

    def __init__(self):
        self.t, self.busy, self.own, self.kt = time.monotonic(), machine_busy(), own_cpu(), kthreads_cpu()

    def split(self):
        dt = time.monotonic() - self.t
        if dt <= 0:
            return 0.0, 0.0
        kt = (kthreads_cpu() - self.kt) / CLK_TCK / dt
        other = ((machine_busy() - self.busy) - (own_cpu() - self.own)) / CLK_TCK / dt
        return max(0.0, other - kt), max(0.0, kt)

    def cores(self):
        """Other user processes only (what competes with the benchmark for the cores)."""
        return self.split()[0]


def wait_quiet(limit_s, threshold=0.2):
    """Waits (up to limit_s) for a second in which other processes use under `threshold` cores."""
    if limit_s <= 0:
        return
    deadline = time.monotonic() + limit_s
    waited = False
    while time.monotonic() < deadline:
        probe = OtherLoad()
        time.sleep(1.0)
        load = probe.cores()
        if load < threshold:
            return
        if not waited:
            log(f"  other processes are using {load:.1f} cores; waiting up to {limit_s:.0f} s for quiet")
            waited = True
    log("  still busy: measuring anyway (see the 'other CPU' column)")
