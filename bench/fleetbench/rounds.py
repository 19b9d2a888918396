"""Interleaved rounds (scenarios 1-4, 8 and 9): the order servers are measured in, each server's median
round, and the paired per-round ratios."""

import statistics

from .base import SERVERS


def interleaved(rounds):
    """(round, server) in the order measured: every server once per round, so a drift of the
    machine during the scenario touches every server alike; the order turns around every other
    round, so no server always goes first (or always follows the same one)."""
    return [(rnd, server) for rnd in range(rounds)
            for server in (SERVERS if rnd % 2 == 0 else SERVERS[::-1])]


def pair_rounds(row, runs, key="rps"):
    """Sets the row's ratios from the rounds: fleetgate's req/s (or another figure of the run:
    `key`, e.g. "p99") over the other server's in the same round (measured next to each other),
    the median over the rounds. The machine drifts by more between rounds than within one, which
    a ratio of per-server medians would not cancel."""
    fg = runs.get("fleetgate", [])
    for other in SERVERS:
        if other == "fleetgate" or not runs.get(other):
            continue
        ratios = [a[0][key] / b[0][key] for a, b in zip(fg, runs[other])
                  if b[0].get(key) and a[0].get(key) is not None]
        if len(ratios) < 2:
            continue
        row.paired[other] = statistics.median(ratios)
        medians = row.values.get("fleetgate"), row.values.get(other)
        of_medians = f"; the ratio of the medians is {medians[0] / medians[1]:.2f}" if all(medians) else ""
        row.notes.append(f"fleetgate/{other}: per-round ratios " + ", ".join(f"{x:.2f}" for x in ratios)
                         + f", median {row.paired[other]:.2f} (reported){of_medians}")


def median_run(server, runs):
    """The run with the median req/s of one server's rounds (its wrk figures are reported), the
    peak RSS over all rounds, and the notes of every round (each round's failures stay visible)."""
    ordered = sorted(runs, key=lambda run: run[0]["rps"])
    r, _, _ = ordered[len(ordered) // 2]
    rss = max(run[1] for run in runs)
    notes = []
    for _, _, round_notes in runs:
        notes += [n for n in round_notes if n not in notes]
    if len(runs) > 1:
        notes.append(f"{server}: {len(runs)} interleaved rounds, req/s "
                     + ", ".join(f"{run[0]['rps']:,.0f}" for run in runs) + " (the median is reported)")
    return r, rss, notes
