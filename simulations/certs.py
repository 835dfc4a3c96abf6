"""TLS files for a deployment: a CA and a server certificate naming the hosts the devices dial.

``fl-split certs DIR --host server.example.org`` writes ``ca.crt``, ``server.pem`` and ``server.key``:
the files ``flower-superlink --ssl-*`` and the stream transport's ``stream.ssl_*`` take; devices
get ``ca.crt`` (``flower-supernode --root-certificates``). Made with ``cryptography`` (a Flower
dependency): EC P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certs(
    folder: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365
) -> tuple[Path, Path, Path]:
    """Write ``(ca.crt, server.pem, server.key)`` under ``folder``; the certificate names every one of ``hosts``.

    Parameters
    ----------
    folder:
        Created if missing; existing files of those names are overwritten.
    hosts:
        DNS names or IP addresses the clients dial (the certificate's subject alternative names).
    days:
        Validity.
    """
    folder = Path(folder)
    if not hosts:
        raise ValueError("name at least one host (the DNS name or IP the devices dial)")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fl-split test CA"))
        .issuer_name(_name("fl-split test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([_general_name(h) for h in hosts])
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths[2].unlink(missing_ok=True)  # created afresh so the mode applies whatever the umask
    fd = os.open(paths[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``fl-split certs DIR [--host NAME ...] [--days N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="fl-split certs", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="folder to write ca.crt, server.pem, server.key into")
    parser.add_argument(
        "--host", action="append", dest="hosts", help="a DNS name or IP the devices dial (repeat; default localhost)"
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)
    paths = make_certs(args.dir, args.hosts or ["localhost", "127.0.0.1"], args.days)
    print("\n".join(str(p) for p in paths))
    return 0
