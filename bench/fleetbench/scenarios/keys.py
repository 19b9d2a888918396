"""Scenario 9: full TLS handshakes per second with other leaf keys than the P-256 of scenario 3: an
RSA 2048 leaf (9a) and an ECDSA P-384 leaf (9b), from the same per-run CA. As scenario 3: the
redirect site over HTTPS, a new connection per request (wrk with `Connection: close`), interleaved
rounds, fewer and shorter than scenarios 1-4 (half of --seconds each: a handshake rate settles
within seconds)."""

from .. import procs
from ..base import REDIRECT_NAMES
from ..certs import openssl_ca, openssl_leaf
from .redirect import measure

KEYS = [("9a", "rsa2048", "RSA 2048"), ("9b", "p384", "ECDSA P-384")]
ROUNDS_MAX = 3  # of args.rounds (5 in the full run)
TARGET = 1.0


def run(args, results):
    ca = openssl_ca(procs.TMP, "keys")
    rounds = min(args.rounds, ROUNDS_MAX)
    seconds = max(3, args.seconds // 2)
    for sid, key_type, label in KEYS:
        cert, key = openssl_leaf(procs.TMP, f"leaf-{key_type}", *ca, REDIRECT_NAMES + ["main.bench.test"],
                                 key_type=key_type)
        row = results.row(sid, f"HTTPS new connection per request, {label} leaf", "hs/s", higher_is_better=True,
                          target=f"≥ {TARGET} × nginx",
                          target_fn=lambda r: r.ratio("nginx") is not None and r.ratio("nginx") >= TARGET)
        measure(args, row, sid, "https", ("Connection: close",), cert, key, rounds, seconds, tls_note=True)
        row.notes.append(f"{rounds} round(s) of {seconds} s (scenario 3 has {args.rounds} of {args.seconds} s); "
                         "each request a new connection and a full handshake (wrk never resumes a session)")
