"""HTTPS for the page on the local network: a self-signed certificate made on first use, or the user's own."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from avatarcam.errors import ConfigError

CERT_NAME = "facemimic-cert.pem"
KEY_NAME = "facemimic-key.pem"
VALID_DAYS = 825
"""Validity of the self-signed certificate (the longest browsers accept for a leaf certificate)."""
RENEW_DAYS = 7
"""A self-signed certificate expiring sooner than this is replaced."""


def _names(hosts: list[str]) -> list:
    from cryptography import x509

    names: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in [socket.gethostname(), *hosts]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host and x509.DNSName(host) not in names:
                names.append(x509.DNSName(host))
            continue
        if not address.is_unspecified and x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    return names


def _still_valid(cert_path: Path) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left > datetime.timedelta(days=RENEW_DAYS)


def self_signed(folder: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certificate, key) PEM paths in `folder`, made now (EC P-256, valid VALID_DAYS) unless a valid pair is there.

    The certificate names localhost, 127.0.0.1, this machine's host name and `hosts` (names or IP addresses);
    the key file is readable by its owner only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    if cert_path.is_file() and key_path.is_file() and _still_valid(cert_path):
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FaceMimic (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS server context for the page; ConfigError naming the file when the pair cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the certificate {cert_path} with key {key_path} ({exc}): give a PEM "
                          "certificate and its private key with --cert/--key, or leave both out for a "
                          "self-signed one") from None
    return context
