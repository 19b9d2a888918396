"""Results: the rows of the table, the console and markdown tables, the notes, and RESULTS.md
(with the machine, the server versions, the commands and the configurations)."""

import json
import os
import shlex
import subprocess
import sys

from .base import FLEETGATE, MiB, ROOT, SERVERS
from .procs import COMMANDS, which

CONFIGS = {}  # server -> (language, config text) of scenarios 1-3, for RESULTS.md
FAILURES = []  # measurements that failed: the temp dir (configs, logs) is kept for a look
PROXY_CONFIGS = {}  # server -> (language, config text) of scenario 4, for RESULTS.md
H2_PROXY_CONFIGS = {}  # server -> (language, config text) of scenario 8's proxy, for RESULTS.md
IDLE_CONFIGS = {}  # server -> (language, config text) of scenario 10, for RESULTS.md
CONFIG_FILES = {"fleetgate": ("fleetgate.toml", "toml"), "nginx": ("nginx.conf", "nginx"),
                "caddy": ("caddy.json", "json")}


def remember_config(configs, server, d):
    """Keeps the first config `server` was started with in `d` (JSON indented), for RESULTS.md."""
    if server not in configs:
        fname, lang = CONFIG_FILES[server]
        text = open(os.path.join(d, fname)).read()
        if lang == "json":
            text = json.dumps(json.loads(text), indent=2)
        configs[server] = (lang, text)


class Row:
    def __init__(self, sid, title, unit, higher_is_better, target, target_fn):
        self.sid, self.title, self.unit = sid, title, unit
        self.higher_is_better = higher_is_better
        self.target, self.target_fn = target, target_fn
        self.values, self.rss, self.notes, self.skipped, self.details = {}, {}, [], {}, {}
        self.other = {}  # server -> cores used by other user processes meanwhile
        self.kthreads = {}  # server -> cores used by kernel threads meanwhile
        self.paired = {}  # server -> median of per-round fleetgate/server ratios (pair_rounds)

    def set(self, server, value, rss, notes, detail=None):
        self.values[server] = value
        if rss:
            self.rss[server] = rss
        self.notes += notes
        if detail is not None:
            self.details[server] = detail

    def skip(self, server, why):
        self.skipped[server] = why

    def value(self, server):
        return self.values.get(server)

    def ratio(self, other):
        if other in self.paired:
            return self.paired[other]
        a, b = self.values.get("fleetgate"), self.values.get(other)
        if a is None or not b:
            return None
        return a / b

    def met(self):
        if self.target_fn is None:
            return ""
        return "yes" if self.target_fn(self) else "NO"


class Results:
    def __init__(self):
        self.rows = []

    def row(self, *a, **kw):
        r = Row(*a, **kw)
        self.rows.append(r)
        return r

    def table(self, markdown):
        head = ["#", "scenario", "unit", "fleetgate", "nginx", "caddy", "fg/nginx", "fg/caddy",
                "RSS fg", "RSS nginx", "RSS caddy", "target", "met", "other CPU"]
        body = []
        for r in self.rows:
            cells = [r.sid, r.title, r.unit]
            for s in SERVERS:
                v = r.values.get(s)
                cells.append(fmt_value(v, r.unit) if v is not None else ("skip" if s in r.skipped else "—"))
            for o in ("nginx", "caddy"):
                q = r.ratio(o)
                cells.append(f"{q:.2f}×" if q is not None else "—")
            for s in SERVERS:
                cells.append(f"{r.rss[s] / MiB:.1f} MiB" if s in r.rss else "—")
            cells += [r.target, r.met(), fmt_other(r.other)]
            body.append(cells)
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(c for c in cells) + " |" for cells in body]
            return "\n".join(lines)
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
        fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])

    def notes(self):
        out = []
        for r in self.rows:
            for n in r.notes:
                out.append(f"{r.sid}: {n}")
            for s, why in r.skipped.items():
                out.append(f"{r.sid}: {s} {why}")
            # a second row of the same measurement (4's p99) repeats none of it
            same = any(o.sid == r.sid and o.other == r.other and o.kthreads == r.kthreads
                       for o in self.rows[:self.rows.index(r)])
            if r.other and not same:
                out.append(f"{r.sid}: CPU used outside the benchmark during the measurement (other user "
                           "processes + kernel threads): " +
                           ", ".join(f"{s} {c:.2f} + {r.kthreads.get(s, 0.0):.2f} cores" for s, c in r.other.items()))
            for s, d in r.details.items():
                if "counts" in d:  # h2load
                    c = d["counts"]
                    out.append(f"{r.sid}: {s} h2load: {c.get('succeeded', 0)} requests succeeded, "
                               f"{c.get('failed', '?')} failed ({c.get('errored', '?')} errored, "
                               f"{c.get('timeout', '?')} timed out), status {d['status']}, latency p50 {d['p50']} ms, "
                               f"p99 {d['p99']} ms (from its per-request log), protocol {d['protocol']}")
                    continue
                out.append(f"{r.sid}: {s} wrk: {d['requests']} requests, latency p50 {d['p50']} ms, "
                           f"p99 {d['p99']} ms, non-2xx/3xx {d['non_2xx_3xx']}, socket errors {d['errors'] or 'none'}")
        return out


def alarms(results):
    """The notes marked `!!` (failed requests, another protocol, a server that died or closed
    connections it should have kept): repeated at the top of the output and of RESULTS.md."""
    return [n for n in results.notes() if "!! " in n]


def fmt_other(other):
    """The most any of the row's measurements had to share with other processes, in cores."""
    if not other:
        return ""
    worst = max(other.values())
    return f"{worst:.2f}" + (" !" if worst >= OTHER_LOAD_WARN else "")


OTHER_LOAD_WARN = 0.2


def fmt_value(v, unit):
    if unit in ("s", "ms"):
        return f"{v:.2f}"
    if unit in ("%", "KiB/conn"):
        return f"{v:.1f}"
    return f"{v:,.0f}"


def version(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def dpkg_version(pkg):
    return version(["dpkg-query", "-W", "-f=${Version}", pkg])


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return [
        f"nproc: {os.cpu_count()}",
        f"CPU: {model}",
        f"memory: {mem}",
        f"kernel: {os.uname().release} ({os.uname().machine})",
        f"fleetgate: {version([FLEETGATE, '--version'])} (release build; tokio multi-thread runtime, default workers)",
        f"nginx: {version([which('nginx'), '-v'])} (Debian {dpkg_version('nginx')})",
        f"caddy: {version([which('caddy'), 'version'])} (Debian {dpkg_version('caddy')})",
        f"wrk: {version(['wrk', '-v'])}",
        f"h2load: {version(['h2load', '--version'])} (Debian nghttp2-client {dpkg_version('nghttp2-client')})",
        f"pebble: Debian {dpkg_version('pebble')}",
        f"openssl: {version(['openssl', 'version'])}",
        f"python: {sys.version.split()[0]}",
    ]


def write_results(args, results, started, durations, path):
    git = version(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    lines = [
        "# fleetgate benchmark results",
        "",
        "<!-- GENERATED by bench/run: do not edit by hand; run bench/run to regenerate. -->",
        "",
        f"Generated by `{shlex.join(['bench/run'] + sys.argv[1:])}` on "
        f"{started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} "
        f"(commit {git}{', with uncommitted changes' if dirty else ''}); "
        f"mode: {'quick' if args.quick else 'full'}, {args.seconds} s per load run, "
        f"{args.rounds} interleaved round(s) of scenarios 1-4 and 7, fewer of 8 and 9 (see their notes; "
        f"each server's median round reported; the ratios are medians of per-round ratios); "
        f"the run took {durations['total']:.0f} s (build {durations['build']:.0f} s; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items() if k.startswith("scenario")) + ").",
        "",
        "Every figure comes from this one run with the same load generator; compare ratios, not "
        "absolute numbers, across runs (see bench/README.md for the caveats).",
        "",
        "## Results",
        "",
    ]
    worst = max([c for r in results.rows for c in r.other.values()] or [0.0])
    if worst >= OTHER_LOAD_WARN:
        lines += [f"**Warning:** other processes used up to {worst:.1f} cores during some measurements "
                  "(column 'other CPU', marked !): those figures are depressed and noisy.", ""]
    loud = alarms(results)
    if loud:
        lines += [f"**Warning:** {len(loud)} note(s) report failed requests or a misbehaving server:", ""]
        lines += [f"- {n}" for n in loud] + [""]
    lines += [
        results.table(markdown=True),
        "",
        "RSS is peak resident memory (VmHWM) over that scenario's server process; nginx is master + "
        "workers summed. Ratios are fleetgate / other; for rows in seconds, ms or KiB/conn lower is better.",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {n}" for n in results.notes()] or ["- none"]
    lines += ["", "## Machine", ""] + [f"- {m}" for m in machine()]
    lines += ["", "## Commands", "",
              "Ports are picked free at run time; temp paths differ on every run.", "", "```"]
    lines += COMMANDS.lines + ["```", ""]
    if CONFIGS:
        lines += ["## Configurations (scenarios 1-3, 8 and 9: the redirect)", "",
                  "As generated for this run (ports and temp paths differ each run).", ""]
        for name, (lang, text) in CONFIGS.items():
            lines += [f"### {name}", "", f"```{lang}", text.rstrip(), "```", ""]
    for title, configs in (("scenario 4", PROXY_CONFIGS), ("scenario 8, the proxy", H2_PROXY_CONFIGS),
                           ("scenario 10", IDLE_CONFIGS)):
        if not configs:
            continue
        lines += [f"## Configurations ({title})", "",
                  "As generated for this run (ports and temp paths differ each run).", ""]
        for name, (lang, text) in configs.items():
            lines += [f"### {name}", "", f"```{lang}", text.rstrip(), "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
