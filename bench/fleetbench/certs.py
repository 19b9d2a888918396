"""Certificates: a throwaway CA and leaf made with openssl per run (the leaf ECDSA P-256, or P-384 or
RSA 2048 for scenario 9), and scenario 5's 100,000 certificates, cached in bench/.cache/sni-100000
(git-ignored). The cache is made when missing or incomplete (no `complete` marker): about a minute
with the `cryptography` package, about ten with openssl in a parallel loop."""

import datetime
import os
import shutil
import subprocess
import time

from .base import CACHE, SNI_DOMAIN, SNI_MAX, log
from .procs import run_cmd


def openssl_ca(dirpath, name):
    key, pem = os.path.join(dirpath, f"{name}-ca.key"), os.path.join(dirpath, f"{name}-ca.pem")
    run_cmd(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
    run_cmd(["openssl", "req", "-x509", "-new", "-key", key, "-subj", f"/CN={name} CA (fleetgate bench)",
             "-days", "30", "-out", pem,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return pem, key


# The leaf key types: openssl's -newkey arguments, and the key usage a TLS server certificate of
# that type carries (an RSA key may also encipher, for RSA key exchange; ECDSA keys only sign).
LEAF_KEYS = {
    "p256": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "digitalSignature"),
    "p384": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"], "digitalSignature"),
    "rsa2048": (["-newkey", "rsa:2048"], "digitalSignature,keyEncipherment"),
}


def openssl_leaf(dirpath, name, ca_pem, ca_key, dns_names, ips=(), key_type="p256"):
    """A leaf for dns_names (and ips) signed by the CA, its key of `key_type` (see LEAF_KEYS)."""
    newkey, usage = LEAF_KEYS[key_type]
    key, pem = os.path.join(dirpath, f"{name}.key"), os.path.join(dirpath, f"{name}.pem")
    san = ",".join([f"DNS:{d}" for d in dns_names] + [f"IP:{i}" for i in ips])
    run_cmd(["openssl", "req", "-x509", *newkey, "-nodes",
             "-keyout", key, "-out", pem, "-subj", f"/CN={dns_names[0]}", "-days", "30",
             "-CA", ca_pem, "-CAkey", ca_key,
             "-addext", f"subjectAltName={san}",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", f"keyUsage=critical,{usage}",
             "-addext", "extendedKeyUsage=serverAuth"])
    return pem, key


def sni_name(i):
    return f"s{i:05d}.{SNI_DOMAIN}"


def sni_certs():
    """SNI_MAX names, each with its own ECDSA P-256 certificate from one CA, cached under
    bench/.cache (about a minute with `cryptography`, ten with openssl)."""
    base = os.path.join(CACHE, f"sni-{SNI_MAX}")
    certs = os.path.join(base, "certs")
    done = os.path.join(base, "complete")
    if os.path.exists(done):
        return base
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(certs)
    t0 = time.monotonic()
    try:
        import cryptography  # noqa: F401
        how = "python cryptography"
        _sni_certs_cryptography(base, certs)
    except ImportError:
        how = "openssl in a parallel loop"
        _sni_certs_openssl(base, certs)
    open(done, "w").write(f"{SNI_MAX} certificates made with {how}\n")
    log(f"made {SNI_MAX} certificates with {how} in {time.monotonic() - t0:.1f} s (cached in {base})")
    return base


def _sni_certs_cryptography(base, certs):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetgate bench SNI CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(base, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    for i in range(SNI_MAX):
        name = sni_name(i)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(ku, critical=True).add_extension(eku, critical=False)
                .sign(ca_key, hashes.SHA256()))
        with open(os.path.join(certs, f"{name}.pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(certs, f"{name}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))


def _sni_certs_openssl(base, certs):
    ca_pem, ca_key = openssl_ca(base, "sni")
    os.rename(ca_pem, os.path.join(base, "ca.pem"))
    ca_pem = os.path.join(base, "ca.pem")
    script = ('n="$1"; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes '
              f'-keyout "{certs}/$n.key" -out "{certs}/$n.pem" -subj "/CN=$n" -days 3650 '
              f'-CA "{ca_pem}" -CAkey "{ca_key}" -addext "subjectAltName=DNS:$n" '
              '-addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth 2>/dev/null')
    names = "\n".join(sni_name(i) for i in range(SNI_MAX)) + "\n"
    jobs = str(max(2, os.cpu_count() or 2))
    res = subprocess.run(["xargs", "-P", jobs, "-n", "1", "sh", "-c", script, "sh"], input=names, text=True)
    if res.returncode != 0:
        raise RuntimeError("openssl could not make the SNI certificates")
