"""The browser mode without a browser: a session driven with decoded frames of a real clip, the settings and
upload checks, the token/HTTPS rules and the certificate. (tests/test_web.py runs the page in Chromium.)"""

from __future__ import annotations

import ssl
import time

import numpy as np
import pytest

from avatarcam.config import load_config
from avatarcam.errors import AvatarError, ConfigError
from tests.conftest import ROOT

pytest.importorskip("aiortc", reason="the browser mode's packages: python tools/install.py --web")

DRIVER = ROOT / "tests" / "fixtures" / "driving" / "d12.mp4"


def _parts(config):
    from avatarcam.generators import build_reenactor
    from avatarcam.landmarks import landmark_model_path
    from avatarcam.paths import project_path
    from avatarcam.web.library import AvatarLibrary
    from avatarcam.web.session import SessionParts

    library = AvatarLibrary(project_path(config.avatars.folder), landmark_model_path(config))
    parts = SessionParts(make_reenactor=lambda name: build_reenactor(config.generator, config.motion),
                         load_avatar=library.load, landmark_model=landmark_model_path(config),
                         calibration_window_s=0.2, calibration_strict=False)
    return library, parts


def test_a_session_renders_the_newest_frame_and_drops_the_rest():
    import av

    from avatarcam.web.session import ClientSession

    config = load_config(overrides={"generator.canvas_size": 256})
    library, parts = _parts(config)
    session = ClientSession("test-session", parts, generator="mesh", avatar="astronaut")
    try:
        with av.open(str(DRIVER)) as container:
            frames = [f for _, f in zip(range(40), container.decode(video=0))]
        session.start()
        for frame in frames:  # faster than it renders: latest wins, older frames are dropped, never queued
            session.offer(frame)
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        while session.incoming.peek()[0] != session.outgoing.peek()[0] + session.incoming.dropped \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        seq, out = session.outgoing.peek()
        assert out is not None and out.canvas_size == 256 and out.yuv_i420.shape == (384, 256)
        assert session.incoming.dropped > 0 and seq + session.incoming.dropped == len(frames)
        assert len(out.faces) == 1 and out.image_size == (512, 512)
        assert out.calibration == "calibrated"
        session.update({"intensity.mouth": 0.0, "smoothing": 0.9})
        session.offer(frames[-1])
        deadline = time.monotonic() + 10
        while session.outgoing.peek()[0] == seq and time.monotonic() < deadline:
            time.sleep(0.05)
        motion = session.reenactor.motion.settings
        assert motion.intensity["mouth"] == 0.0 and motion.smoothing == 0.9
    finally:
        session.close()
        library.close()
    assert not session.is_running


def test_a_stuck_session_does_not_hold_up_another():
    import dataclasses
    import threading

    import av

    from avatarcam.generators import build_reenactor
    from avatarcam.web.session import ClientSession

    config = load_config(overrides={"generator.canvas_size": 256})
    library, parts = _parts(config)
    release = threading.Event()
    entered = threading.Event()

    class Stuck:
        """The real mesh reenactor whose render() waits until released (a client whose generator hangs)."""

        def __init__(self) -> None:
            self.inner = build_reenactor(config.generator, config.motion)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def render(self, *args, **kwargs):
            entered.set()
            release.wait(30)
            return self.inner.render(*args, **kwargs)

    stuck = ClientSession("stuck", dataclasses.replace(parts, make_reenactor=lambda name: Stuck()),
                          generator="mesh", avatar="astronaut")
    healthy = ClientSession("healthy", parts, generator="mesh", avatar="astronaut")
    try:
        with av.open(str(DRIVER)) as container:
            frames = [f for _, f in zip(range(12), container.decode(video=0))]
        stuck.start()
        healthy.start()
        stuck.offer(frames[0])
        assert entered.wait(20)
        for frame in frames:
            stuck.offer(frame)  # kept in its own latest-wins slot: one waiting frame, the rest dropped
            healthy.offer(frame)
            seq = healthy.outgoing.peek()[0]
            deadline = time.monotonic() + 20
            while healthy.outgoing.peek()[0] == seq and time.monotonic() < deadline:
                time.sleep(0.01)
        assert healthy.outgoing.peek()[0] == len(frames)  # every frame rendered while the other was stuck
        assert stuck.outgoing.peek()[0] == 0 and stuck.incoming.dropped == len(frames) - 1
    finally:
        release.set()
        stuck.close()
        healthy.close()
        library.close()


def test_settings_are_checked_by_name_and_range():
    from avatarcam.web.session import ClientSettings

    settings = ClientSettings().merged({"intensity.eyes": 1.5, "num_faces": 3, "overlay": True})
    assert settings.intensity["eyes"] == 1.5 and settings.num_faces == 3 and settings.overlay
    assert settings.as_dict()["intensity.eyes"] == 1.5
    with pytest.raises(ValueError, match="intensity.mouth = 2.5 is not a number from 0.0 to 2.0"):
        settings.merged({"intensity.mouth": 2.5})
    with pytest.raises(ValueError, match="num_faces = 9"):
        settings.merged({"num_faces": 9})
    with pytest.raises(ValueError, match="mirror = 'yes' is not true or false"):
        settings.merged({"mirror": "yes"})
    with pytest.raises(ValueError, match="unknown setting 'gain'"):
        settings.merged({"gain": 1})


def test_uploads_are_checked_before_decoding(tmp_path):
    from avatarcam.landmarks import landmark_model_path
    from avatarcam.web.library import AvatarLibrary, upload_kind

    assert upload_kind(b"\x89PNG\r\n\x1a\n....") == "png"
    assert upload_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert upload_kind(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert upload_kind(b"<svg xmlns=") is None
    library = AvatarLibrary(tmp_path, landmark_model_path(load_config()))
    try:
        with pytest.raises(AvatarError, match="more than the 0.0 MB limit"):
            library.from_upload(b"\xff\xd8\xff" + bytes(100), 256, max_bytes=10)
        with pytest.raises(AvatarError, match="could not be read"):
            library.from_upload(b"\xff\xd8\xff" + bytes(100), 256, max_bytes=10_000)
        avatar = library.from_upload((ROOT / "tests/fixtures/source/lp_s42.jpg").read_bytes(), 256,
                                     max_bytes=8 * 2**20)
        assert avatar.canvas_bgr.shape == (256, 256, 3) and avatar.path is None
        assert list(tmp_path.iterdir()) == []  # nothing written to the avatars folder
    finally:
        library.close()


def test_localhost_needs_no_token_and_the_network_needs_token_and_https(tmp_path):
    from cryptography import x509

    from avatarcam.web.server import offered_generators, security

    assert security(load_config()) == (None, None)
    token, context = security(load_config(overrides={"web.host": "0.0.0.0", "web.tls_dir": str(tmp_path)}))
    assert token and len(token) >= 20 and isinstance(context, ssl.SSLContext)
    cert = x509.load_pem_x509_certificate((tmp_path / "facemimic-cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert (tmp_path / "facemimic-key.pem").stat().st_mode & 0o077 == 0
    first = (tmp_path / "facemimic-cert.pem").read_bytes()
    security(load_config(overrides={"web.host": "0.0.0.0", "web.tls_dir": str(tmp_path)}))
    assert (tmp_path / "facemimic-cert.pem").read_bytes() == first  # made on first use, then reused
    token, _ = security(load_config(overrides={"web.host": "0.0.0.0", "web.tls_dir": str(tmp_path),
                                               "web.token": "chosen-token"}))
    assert token == "chosen-token"
    with pytest.raises(ConfigError, match="give both --cert and --key"):
        security(load_config(overrides={"web.cert": str(tmp_path / "facemimic-cert.pem")}))
    with pytest.raises(ConfigError, match="cannot use the certificate"):
        security(load_config(overrides={"web.cert": str(tmp_path / "facemimic-key.pem"),
                                        "web.key": str(tmp_path / "facemimic-key.pem")}))
    assert offered_generators(load_config()) == ["mesh"]
    assert offered_generators(load_config(overrides={"generator.model": "fomm"})) == ["fomm", "mesh"]
    with pytest.raises(ConfigError, match="web.generators names warp"):
        offered_generators(load_config(overrides={"web.generators": ["warp"]}))


def test_serve_flags_map_onto_the_web_config():
    from avatarcam.cli import build_parser, overrides_from_args

    args = build_parser().parse_args(["--serve", "--host", "0.0.0.0", "--port", "9000", "--token", "t",
                                      "--cert", "c.pem", "--key", "k.pem"])
    assert args.serve
    assert {k: v for k, v in overrides_from_args(args).items() if k.startswith("web.")} == {
        "web.host": "0.0.0.0", "web.port": 9000, "web.token": "t", "web.cert": "c.pem", "web.key": "k.pem"}
    config = load_config(overrides={"web.ice_servers": ["stun:stun.example.org"]})
    assert config.web.ice_servers == ["stun:stun.example.org"]
    with pytest.raises(ConfigError, match="web.ice_servers"):
        load_config(overrides={"web.ice_servers": "stun:stun.example.org"})


def test_localhost_serves_the_page_without_token_or_https():
    import json
    import socket
    import urllib.request

    from avatarcam.web.server import Background

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Background(load_config(overrides={"web.port": port})) as background:
        assert background.listening.urls == [f"http://127.0.0.1:{port}/"] and background.listening.token is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            page = response.read().decode()
            assert "<title>FaceMimic</title>" in page
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10) as response:
            info = json.loads(response.read())
        assert info["clients"] == 0 and info["generators"] == ["mesh"] and info["avatar"] == "astronaut"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/avatars/astronaut.jpg", timeout=10) as response:
            assert response.headers["Content-Type"] == "image/jpeg" and response.read()[:3] == b"\xff\xd8\xff"


def _sans(cert_path):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(a) for a in names.get_values_for_type(x509.IPAddress)}, set(names.get_values_for_type(x509.DNSName))


def test_the_self_signed_certificate_names_every_address_the_server_prints(tmp_path, monkeypatch):
    """--host 0.0.0.0 prints a URL per LAN address: the certificate must name each (an IP SAN), or the browser on
    another device refuses it for that address; a certificate made before the address existed is replaced."""
    from avatarcam.web import server

    monkeypatch.setattr(server, "_lan_addresses", lambda: ["192.0.2.44", "198.51.100.7"])
    config = load_config(overrides={"web.host": "0.0.0.0", "web.tls_dir": str(tmp_path)})
    token, _ = server.security(config)
    printed = server._urls(config, token, secure=True)
    assert [url.split("/")[2] for url in printed] == ["192.0.2.44:8080", "198.51.100.7:8080"]
    addresses, dns = _sans(tmp_path / "facemimic-cert.pem")
    assert {"192.0.2.44", "198.51.100.7", "127.0.0.1"} <= addresses and "localhost" in dns
    monkeypatch.setattr(server, "_lan_addresses", lambda: ["203.0.113.5"])  # the machine got a new address
    server.security(config)
    assert "203.0.113.5" in _sans(tmp_path / "facemimic-cert.pem")[0]
    server.security(load_config(overrides={"web.host": "203.0.113.5", "web.tls_dir": str(tmp_path)}))
    assert "203.0.113.5" in _sans(tmp_path / "facemimic-cert.pem")[0]


def test_plain_http_on_the_https_port_is_redirected_to_https(tmp_path):
    """A user who types http:// (or no scheme) gets a redirect and a line saying to use https://, not a closed
    connection; TLS on the same port still serves the page."""
    import http.client
    import socket
    import urllib.request

    from avatarcam.web.server import Background
    from avatarcam.web.tls import self_signed

    cert, key = self_signed(tmp_path, ["127.0.0.1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(overrides={"web.port": port, "web.cert": str(cert), "web.key": str(key),
                                    "web.token": "tok3n"})
    with Background(config) as background:
        assert background.listening.urls == [f"https://127.0.0.1:{port}/?token=tok3n"]
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        plain.request("GET", "/?token=tok3n")
        response = plain.getresponse()
        body = response.read().decode()
        assert response.status == 307, (response.status, body)
        assert response.headers["Location"] == f"https://127.0.0.1:{port}/?token=tok3n"
        assert f"https://127.0.0.1:{port}/?token=tok3n" in body and "HTTPS" in body
        plain.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # no Host header: still advice
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := raw.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400") and b"https://" in reply
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # a client that connects and leaves without a word
        context = ssl.create_default_context(cafile=str(cert))  # the certificate names 127.0.0.1
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/?token=tok3n", context=context,
                                    timeout=10) as page:
            assert "<title>FaceMimic</title>" in page.read().decode()


def _offer_a_camera(url: str) -> dict:
    """POST a real WebRTC offer with a video track (aiortc's test pattern) to the page's API; the JSON answer."""
    import asyncio
    import json
    import urllib.request

    from aiortc import RTCPeerConnection, VideoStreamTrack

    async def offer() -> dict:
        pc = RTCPeerConnection()
        try:
            pc.addTrack(VideoStreamTrack())
            await pc.setLocalDescription(await pc.createOffer())
            body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}).encode()
            request = urllib.request.Request(url + "api/offer", data=body,
                                             headers={"Content-Type": "application/json"})
            reply = await asyncio.get_running_loop().run_in_executor(
                None, lambda: urllib.request.urlopen(request, timeout=60).read())
            return json.loads(reply)
        finally:
            await pc.close()

    return asyncio.run(offer())


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    """A service manager's SIGTERM closes every visitor's session and exits 0 (it was killed, status 143). The
    first start shows the responsible-use notice, as the camera mode's does (the page offers face swap)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading

    from avatarcam.disclosure import NOTICE_TEXT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--serve", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "FACEMIMIC_CONFIG_DIR": str(tmp_path)})
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        for line in process.stdout:
            if "open " in line:
                assert url in line
                break
        else:
            raise AssertionError("".join(stderr)[-3000:])
        answer = _offer_a_camera(url)
        assert answer["type"] == "answer" and answer["session"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, "".join(stderr)[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    log = "".join(stderr)
    assert "stopping (SIGTERM)" in log
    assert f"web session {answer['session'][:6]} closed (0 left)" in log
    assert "web server stopped (1 session closed)" in log
    assert NOTICE_TEXT.splitlines()[0] in log and (tmp_path / "notice.json").is_file()
    assert "CandidatePair" not in log  # aioice's per-check INFO lines only with --log-level DEBUG


def test_the_token_comes_from_the_environment_and_a_command_line_token_is_warned_about(monkeypatch, caplog):
    """--token shows in `ps` to every local user: $FACEMIMIC_WEB_TOKEN gives it unseen, and the flag (kept working,
    it wins) warns without repeating the token."""
    import logging

    from avatarcam.cli import build_parser, main, overrides_from_args, warn_visible_token

    monkeypatch.setenv("FACEMIMIC_WEB_TOKEN", "from-the-environment")
    parser = build_parser()
    assert overrides_from_args(parser.parse_args(["--serve"]))["web.token"] == "from-the-environment"
    assert overrides_from_args(parser.parse_args(["--serve", "--token", "flag"]))["web.token"] == "flag"
    assert overrides_from_args(parser.parse_args(["--set", "web.token=set"]))["web.token"] == "set"
    caplog.set_level(logging.WARNING)
    assert not warn_visible_token(parser.parse_args(["--serve"])) and not caplog.records
    assert main(["--token", "s3cret-value", "--list-config"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "process list" in warnings[0] and "FACEMIMIC_WEB_TOKEN" in warnings[0]
    assert "s3cret-value" not in warnings[0]
    assert warn_visible_token(parser.parse_args(["--set", "web.token=x"]))
    monkeypatch.setenv("FACEMIMIC_WEB_TOKEN", " ")
    assert "web.token" not in overrides_from_args(parser.parse_args(["--serve"]))


def _swap_session(config, library, frames):
    """A face-swap session (real swap generator) fed `frames` (BGR arrays) one at a time; its Outgoing items."""
    import dataclasses

    import av

    from avatarcam.generators import build_reenactor
    from avatarcam.landmarks import landmark_model_path
    from avatarcam.web.session import ClientSession, SessionParts

    parts = SessionParts(make_reenactor=lambda name: build_reenactor(dataclasses.replace(config.generator,
                                                                                           model=name), config.motion),
                         load_avatar=library.load, landmark_model=landmark_model_path(config),
                         calibration_window_s=0.2, calibration_strict=False, badge=config.output.badge)
    session = ClientSession("swap-session", parts, generator="swap", avatar="astronaut")
    outputs = []
    try:
        session.start()
        for image in frames:
            seq = session.outgoing.peek()[0]
            session.offer(av.VideoFrame.from_ndarray(image, format="bgr24"))
            deadline = time.monotonic() + 20
            while session.outgoing.peek()[0] == seq and time.monotonic() < deadline:
                time.sleep(0.02)
            outputs.append(session.outgoing.peek()[1])
    finally:
        session.close()
    return outputs


def test_face_swap_in_the_browser_sends_the_camera_picture_with_the_badge():
    """Face swap's output is the visitor's own (here 4:3) camera picture with the avatar's face, not a square
    canvas, and it carries the "virtual avatar" badge (output.badge auto), in the picture's bottom-left corner."""
    import cv2

    from avatarcam.capture import iter_frames
    from avatarcam.disclosure import DisclosureBadge
    from avatarcam.landmarks import landmark_model_path
    from avatarcam.paths import project_path
    from avatarcam.web.library import AvatarLibrary
    from avatarcam.web.server import offered_generators

    assert offered_generators(load_config(overrides={"generator.model": "swap"})) == ["swap", "mesh"]
    grey = 128
    frames = []
    for i, frame in enumerate(iter_frames(str(DRIVER))):
        if i >= 30:
            break
        picture = np.full((481, 641, 3), grey, np.uint8)  # odd sides: cut to even for the video encoder
        picture[:400, 241:641] = cv2.resize(frame, (400, 400), interpolation=cv2.INTER_AREA)
        frames.append(picture)
    results = {}
    for badge in ("auto", "off"):
        config = load_config(overrides={"generator.canvas_size": 256, "output.badge": badge})
        library = AvatarLibrary(project_path(config.avatars.folder), landmark_model_path(config))
        try:
            outputs = _swap_session(config, library, frames[:12] if badge == "off" else frames)
        finally:
            library.close()
        last = outputs[-1]
        assert last.size == (640, 480) and last.yuv_i420.shape == (720, 640) and last.canvas_size == 256
        assert len(last.faces) == 1
        results[badge] = cv2.cvtColor(last.yuv_i420, cv2.COLOR_YUV2BGR_I420).astype(int)
    swapped, plain = results["auto"], results["off"]
    x0, y0, x1, y1 = DisclosureBadge(enabled=True).region(640, 480)
    assert np.abs(swapped[y0:y1, x0:x1] - grey).mean() > 40, "the badge is on the picture"
    assert np.abs(plain[y0:y1, x0:x1] - grey).max() < 8, "no badge with output.badge off"
    camera = cv2.flip(frames[-1], 1)[:480, :640]  # the page's mirror setting is on by default: face on the left
    camera = cv2.cvtColor(cv2.cvtColor(camera, cv2.COLOR_BGR2YUV_I420), cv2.COLOR_YUV2BGR_I420).astype(int)
    difference = np.abs(swapped - camera).max(2)
    # (measured here: 14 449 pixels of the face box differ by over 10 levels; outside it none differs at all)
    assert (difference[40:380, 20:380] > 10).sum() > 5000, "the avatar's face is on the visitor's"
    assert np.percentile(difference[:380, 420:], 99) < 8, "the rest is the camera picture itself"


def test_the_printed_address_carries_a_token_with_spaces_or_ampersands_intact():
    """A token such as 'a b&c' was printed as ?token=a b&c, which a browser cuts at the space or the '&' (401)."""
    import urllib.parse

    from avatarcam.config import load_config
    from avatarcam.web.server import _urls

    config = load_config(overrides={"web.host": "127.0.0.1", "web.port": 8443})
    (url,) = _urls(config, "a b&c=d", True)
    assert " " not in url and url.endswith("?token=a%20b%26c%3Dd")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {"token": ["a b&c=d"]}
