"""HTTPS for the page on the local network: a self-signed certificate made on first use, or the user's own, and
the HTTPS listener that answers a plain-HTTP request on its port with a redirect instead of silence."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avatarcam.errors import ConfigError

log = logging.getLogger(__name__)

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


def _still_valid(cert_path: Path, names: list) -> bool:
    """True when the certificate at cert_path is readable, not close to expiry and names every one of `names`
    (a certificate made before the machine got a new address is replaced, or browsers refuse that address)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left > datetime.timedelta(days=RENEW_DAYS) and all(name in named for name in names)


def self_signed(folder: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certificate, key) PEM paths in `folder`, made now (EC P-256, valid VALID_DAYS) unless a valid pair is there.

    The certificate names localhost, 127.0.0.1, this machine's host name and `hosts` (names or IP addresses: the
    addresses the page is served on and printed with); a pair that lacks one of them is replaced. The key file is
    readable by its owner only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    names = _names(hosts)
    if cert_path.is_file() and key_path.is_file() and _still_valid(cert_path, names):
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
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
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


TLS_HANDSHAKE = 0x16
"""First byte of every TLS connection (a handshake record); anything else on the HTTPS port is plain text."""
FIRST_BYTE_TIMEOUT_S = 10.0
"""A connection that sends nothing for this long is closed (TLS and HTTP clients both speak first)."""
HANDSHAKE_TIMEOUT_S = 30.0
PLAIN_HEAD_MAX = 8192
"""Bytes of a plain-HTTP request head read before answering it."""
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_TARGET = re.compile(rb"/[\x21-\x7e]*")


def plain_http_reply(head: bytes, port: int) -> bytes:
    """The whole reply to a plain-HTTP request (its head: request line and headers) made to the HTTPS port.

    307 to the same host, port, path and query over https:// (temporary, so browsers do not remember it for a later
    plain-HTTP server on that port), with a one-line text body saying so; 400 with the same advice when the request
    has no usable Host header or target. Always `Connection: close`.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    target = parts[1] if len(parts) == 3 else b""
    host = next((line.split(b":", 1)[1].strip() for line in lines[1:] if line.lower().startswith(b"host:")), b"")
    if _HOST.fullmatch(host) and _TARGET.fullmatch(target):
        authority = host.decode("ascii")
        if ":" not in authority.rsplit("]", 1)[-1] and port != 443:  # no port in Host: the default one, 80
            authority += f":{port}"
        url = f"https://{authority}{target.decode('ascii')}"
        status, extra = "307 Temporary Redirect", f"Location: {url}\r\n"
        body = f"This FaceMimic page is served over HTTPS only: open {url}\n"
    else:
        status, extra = "400 Bad Request", ""
        body = f"This FaceMimic page is served over HTTPS only: open https://<this address>:{port}/\n"
    data = body.encode("ascii")
    return (f"HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("ascii") + data


async def _first_byte(conn: socket.socket, timeout_s: float) -> bytes:
    """The connection's first byte, left unread (b"" when the peer closed); TimeoutError after timeout_s.

    Polls a non-blocking MSG_PEEK: asyncio has no portable "wait until readable" (add_reader is missing on
    Windows' proactor loop), and a client speaks within milliseconds of connecting.
    """
    loop = asyncio.get_running_loop()
    deadline, delay_s = loop.time() + timeout_s, 0.002
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        if loop.time() > deadline:
            raise TimeoutError
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.05)


async def _answer_plain(conn: socket.socket, port: int) -> None:
    """Read a plain-HTTP request head (up to PLAIN_HEAD_MAX bytes) and send plain_http_reply."""
    loop = asyncio.get_running_loop()
    head = b""
    while b"\r\n\r\n" not in head and len(head) < PLAIN_HEAD_MAX:
        chunk = await asyncio.wait_for(loop.sock_recv(conn, PLAIN_HEAD_MAX - len(head)), FIRST_BYTE_TIMEOUT_S)
        if not chunk:
            break
        head += chunk
    await loop.sock_sendall(conn, plain_http_reply(head.split(b"\r\n\r\n", 1)[0], port))


def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address `host` resolves to (OSError when one cannot be bound)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            sock = socket.create_server(address, family=family, backlog=backlog)
            sock.setblocking(False)
            sockets.append(sock)
    except (OSError, socket.gaierror):
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _accept(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept connections on the listening `sock` for ever, handing each to `handle`."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:  # out of file descriptors, a connection reset while queued: keep serving
            log.warning("web: could not accept a connection (%s)", exc)
            await asyncio.sleep(0.1)
            continue
        handle(conn)


async def _sort(conn: socket.socket, server: Any, context: ssl.SSLContext, port: int) -> None:
    """Hand a TLS connection to the aiohttp `server` (its protocol factory); answer plain HTTP with a redirect."""
    handed_over = False
    try:
        conn.setblocking(False)  # the peek must never block the loop (a proactor loop's accept may not set it)
        first = await _first_byte(conn, FIRST_BYTE_TIMEOUT_S)
        if first and first[0] == TLS_HANDSHAKE:
            await asyncio.get_running_loop().connect_accepted_socket(
                server, conn, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
            handed_over = True
        elif first:
            await _answer_plain(conn, port)
    except (OSError, TimeoutError, asyncio.TimeoutError, ssl.SSLError):
        pass  # the client went away, never spoke, or failed its handshake (a refused certificate)
    finally:
        if not handed_over:
            conn.close()


def https_site(runner: Any, host: str, port: int, context: ssl.SSLContext, *, backlog: int = 128) -> Any:
    """An aiohttp site (web.BaseSite) serving `runner` over TLS on host:port that also answers plain HTTP.

    Browsers show a blank error page when http:// reaches a TLS port that closes the connection, which is what a
    user typing the address without its scheme sees. This site accepts each connection itself, peeks at its first
    byte and hands TLS connections to the runner's server (loop.connect_accepted_socket); a plain-HTTP request gets
    plain_http_reply, a redirect to the https:// address.
    """
    from aiohttp import web

    class HttpsSite(web.BaseSite):
        def __init__(self) -> None:
            super().__init__(runner, ssl_context=context, backlog=backlog)
            self._sockets: list[socket.socket] = []
            self._tasks: set[asyncio.Task] = set()

        @property
        def name(self) -> str:
            return f"https://{host}:{port}"

        def _spawn(self, coroutine: Any) -> None:
            task = asyncio.ensure_future(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        async def start(self) -> None:
            await super().start()
            self._sockets = _listen(host, port, backlog)
            for sock in self._sockets:
                self._spawn(_accept(sock, lambda conn: self._spawn(_sort(conn, runner.server, context, port))))

        async def stop(self) -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in self._sockets:
                sock.close()
            await super().stop()

    return HttpsSite()
