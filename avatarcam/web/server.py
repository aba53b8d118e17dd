"""The browser mode's server: the page, its JSON API and one WebRTC connection (aiortc) per visitor.

Routes (all behind the token when one is set): GET / (the page), /static/* (its script and style), GET /api/info
(generators, avatars, defaults, limits), GET /api/avatars/{name}.jpg (thumbnails), POST /api/offer (SDP offer ->
answer and a session id; 503 with a message when full), POST /api/session/{id} (avatar, generator, settings,
recalibrate), POST /api/session/{id}/avatar (upload a picture for this session), POST /api/session/{id}/close.
Media never passes through the event loop's hands for long: decoded frames go into the session's latest-wins
slot and rendered canvases come back from the other one (session.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import gc
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.config import Config
from avatarcam.errors import ConfigError, FaceMimicError
from avatarcam.generators import GENERATORS, build_reenactor
from avatarcam.landmarks import landmark_model_path
from avatarcam.paths import project_path
from avatarcam.web.library import AvatarLibrary
from avatarcam.web.session import ClientSession, ClientSettings, SessionParts, notify_from_thread

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "facemimic_token"
TOKEN_HEADER = "X-FaceMimic-Token"
RESEND_S = 0.25
"""The avatar track repeats its last frame after this long without a new one (keeps the browser's decoder fed)."""
VIDEO_CLOCK_HZ = 90_000
CLOSE_TIMEOUT_S = 3.0


def is_local(host: str) -> bool:
    """True for addresses only this machine can reach (no token or HTTPS needed there)."""
    return host in LOCAL_HOSTS


def offered_generators(config: Config) -> list[str]:
    """The generators the page offers: web.generators, or generator.model and the built-in mesh (ConfigError
    naming an unknown one). Face swap sends the visitor's camera picture with the avatar's face on it, stamped with
    the "virtual avatar" badge as output.badge says."""
    names = list(config.web.generators) or list(dict.fromkeys([config.generator.model, "mesh"]))
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise ConfigError(f"web.generators names {', '.join(unknown)}, which are not generators: choose from "
                          f"{', '.join(GENERATORS)}")
    return names


@dataclass
class Client:
    """One connected browser: its peer connection, session and the tasks that feed them."""

    session: ClientSession
    pc: Any
    """aiortc.RTCPeerConnection."""
    fresh: asyncio.Event
    channel: Any = None
    """The page's 'meta' data channel (status, latency and the overlay's landmarks go to the page on it)."""
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False


def _meta(client: Client, item: Any, render_fps: float | None) -> str:
    """The JSON the page gets with each new avatar frame."""
    session = client.session
    meta: dict[str, Any] = {
        "seq": item.seq, "latency_ms": round(item.latency_ms, 1), "calibration": item.calibration,
        "faces": len(item.faces), "avatar": session.avatar.name, "generator": session.generator,
        "render_fps": None if render_fps is None else round(render_fps, 1), "canvas": item.canvas_size,
        "size": item.size,
    }
    if session.settings.overlay:
        meta["image_size"] = item.image_size
        meta["points"] = [np.rint(face.points_px[:, :2]).astype(np.int32).ravel().tolist() for face in item.faces]
    return json.dumps(meta)


def make_avatar_track(client: Client) -> Any:
    """The outgoing aiortc video track of `client`: its newest avatar canvas, sent as soon as it is rendered."""
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError
    from av import VideoFrame

    class AvatarTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._start_s = time.perf_counter()
            self._last_pts = -1
            self._last_seq = 0
            self._sent_s: deque[float] = deque(maxlen=30)

        def _render_fps(self) -> float | None:
            times = self._sent_s
            return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else None

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            try:
                await asyncio.wait_for(client.fresh.wait(), RESEND_S)
            except asyncio.TimeoutError:
                pass
            client.fresh.clear()
            if self.readyState != "live":
                raise MediaStreamError
            seq, item = client.session.outgoing.peek()
            if item is None:
                size = client.session.reenactor.canvas_size
                frame = VideoFrame.from_ndarray(np.full((size * 3 // 2, size), 128, np.uint8), format="yuv420p")
            else:
                frame = VideoFrame.from_ndarray(item.yuv_i420, format="yuv420p")
                if seq != self._last_seq:
                    self._last_seq = seq
                    self._sent_s.append(time.perf_counter())
                    channel = client.channel
                    if channel is not None and channel.readyState == "open":
                        channel.send(_meta(client, item, self._render_fps()))
            pts = max(int((time.perf_counter() - self._start_s) * VIDEO_CLOCK_HZ), self._last_pts + 1)
            self._last_pts = pts
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
            return frame

    return AvatarTrack()


async def _consume(track: Any, session: ClientSession) -> None:
    """Hand every decoded camera frame to the session (which keeps only the newest) until the track ends."""
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        session.offer(frame)


def _json_error(status: int, message: str, **extra: Any) -> Any:
    from aiohttp import web

    return web.json_response({"error": message, **extra}, status=status)


class WebServer:
    """The aiohttp application: page, API and sessions. Build with the config; serve with serve()/Background."""

    def __init__(self, config: Config, *, token: str | None, secure: bool):
        from aiohttp import web

        self.config = config
        self.token = token
        self.secure = secure
        self.generators = offered_generators(config)
        self.library = AvatarLibrary(project_path(config.avatars.folder), landmark_model_path(config))
        if not self.library.names():
            raise ConfigError(f"no avatar pictures in {self.library.folder} (avatars.folder): add a portrait")
        self.clients: dict[str, Client] = {}
        self._starting = 0
        self.sessions_closed = 0
        self._parts = SessionParts(
            make_reenactor=self._make_reenactor, load_avatar=self.library.load,
            landmark_model=landmark_model_path(config),
            calibration_window_s=config.calibration.window_s, calibration_strict=config.calibration.strict,
            badge=config.output.badge,
        )
        self.app = web.Application(middlewares=[self._guard],
                                   client_max_size=int(config.web.max_upload_mb * 2**20) + 4096)
        static = resources.files("avatarcam.web") / "static"
        self._static = Path(str(static))
        self.app.add_routes([
            web.get("/", self._index),
            web.get("/api/info", self._info),
            web.get("/api/avatars/{name}.jpg", self._thumbnail),
            web.post("/api/offer", self._offer),
            web.post("/api/session/{id}", self._control),
            web.post("/api/session/{id}/avatar", self._upload),
            web.post("/api/session/{id}/close", self._close_request),
            web.static("/static", self._static),
        ])
        self.app.on_shutdown.append(self._shutdown)

    # -- building blocks

    def _make_reenactor(self, name: str) -> Any:
        if name not in self.generators:
            raise ValueError(f"generator {name!r} is not offered here: choose one of {', '.join(self.generators)}")
        generator = dataclasses.replace(self.config.generator, model=name)
        return build_reenactor(generator, self.config.motion)

    def default_avatar(self) -> str:
        """The avatar a new visitor starts with: avatars.default when it is a name in the folder, else the first."""
        names = self.library.names()
        return self.config.avatars.default if self.config.avatars.default in names else names[0]

    def default_settings(self) -> ClientSettings:
        """A new visitor's settings, from config.yaml's motion and landmarks sections."""
        c = self.config
        return ClientSettings(intensity=dict(vars(c.motion.intensity)), smoothing=c.motion.smoothing,
                              min_detection_confidence=c.landmarks.min_detection_confidence,
                              min_tracking_confidence=c.landmarks.min_tracking_confidence)

    # -- security

    def _authorised(self, request: Any) -> bool:
        if self.token is None:
            return True
        given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or request.cookies.get(TOKEN_COOKIE)
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _middleware_response(self, request: Any, response: Any) -> Any:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'")
        response.headers["Referrer-Policy"] = "no-referrer"
        if self.token is not None and request.query.get("token") and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict", secure=self.secure)
        return response

    @property
    def _guard(self) -> Callable[..., Awaitable[Any]]:
        from aiohttp import web

        @web.middleware
        async def guard(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
            if not self._authorised(request):
                message = ("this FaceMimic page needs its access token: open the URL `python run.py --serve` "
                           "printed (it ends in ?token=...)")
                if request.path.startswith("/api/"):
                    return _json_error(401, message)
                return web.Response(status=401, text=message)
            return self._middleware_response(request, await handler(request))

        return guard

    # -- the page and its data

    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        return web.FileResponse(self._static / "index.html", headers={"Cache-Control": "no-store"})

    async def _info(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({
            "generators": self.generators, "generator": self.generators[0], "avatars": self.library.names(),
            "avatar": self.default_avatar(), "settings": self.default_settings().as_dict(),
            "clients": self.active_clients, "max_clients": self.config.web.max_clients,
            "max_upload_mb": self.config.web.max_upload_mb, "ice_servers": list(self.config.web.ice_servers),
        })

    async def _thumbnail(self, request: Any) -> Any:
        from aiohttp import web

        name = request.match_info["name"]
        if name not in self.library.names():
            return _json_error(404, f"no avatar named {name!r}")
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, self.library.thumbnail, name)
        except FaceMimicError as exc:
            return _json_error(422, str(exc))
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    # -- sessions

    @property
    def active_clients(self) -> int:
        """Browsers connected or connecting now."""
        return len(self.clients) + self._starting

    def full_message(self) -> str:
        limit = self.config.web.max_clients
        return (f"FaceMimic is full: {limit} of {limit} people are using it now (web.max_clients). "
                "Try again when someone leaves.")

    async def _offer(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await request.json()
            sdp, kind = str(body["sdp"]), str(body["type"])
            if not isinstance(body.get("settings") or {}, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _json_error(400, "expected JSON {sdp, type, settings?: {...}} with the browser's WebRTC offer")
        if kind != "offer":
            return _json_error(400, f"expected an SDP offer, got type {kind!r}")
        if self.active_clients >= self.config.web.max_clients:
            return _json_error(503, self.full_message(), full=True)
        generator = str(body.get("generator") or self.generators[0])
        avatar = str(body.get("avatar") or self.default_avatar())
        session_id = secrets.token_urlsafe(12)
        self._starting += 1
        try:
            settings = self.default_settings().merged(body.get("settings") or {})
            session = await asyncio.get_running_loop().run_in_executor(
                None, lambda: ClientSession(session_id, self._parts, generator=generator, avatar=avatar,
                                            settings=settings))
        except (FaceMimicError, ValueError) as exc:
            return _json_error(400, str(exc))
        except Exception as exc:  # a broken generator or model must not take the server down
            log.exception("web session could not start")
            return _json_error(500, f"the session could not start: {type(exc).__name__}: {exc}")
        finally:
            self._starting -= 1
        try:
            answer = await self._connect(session_id, session, sdp)
        except Exception as exc:
            await self.close_client(session_id)
            session.close()
            return _json_error(400, f"the WebRTC offer could not be answered: {exc}")
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session_id,
                                  "settings": session.settings.as_dict(), "avatar": avatar, "generator": generator})

    async def _connect(self, session_id: str, session: ClientSession, sdp: str) -> Any:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        ice = [RTCIceServer(urls=url) for url in self.config.web.ice_servers]
        pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=ice))
        fresh = asyncio.Event()
        client = Client(session=session, pc=pc, fresh=fresh)
        session.on_rendered = notify_from_thread(asyncio.get_running_loop(), fresh)
        self.clients[session_id] = client

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            client.channel = channel

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_client(session_id)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and not client.tasks:
                client.tasks.append(asyncio.ensure_future(_consume(track, session)))
                pc.addTrack(make_avatar_track(client))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not client.tasks:
            raise ValueError("the offer has no camera video: the page must send its camera track")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        session.start()
        return pc.localDescription

    async def close_client(self, session_id: str) -> bool:
        """End one session: its connection, its tasks and its thread; False when there was none. Idempotent."""
        client = self.clients.pop(session_id, None)
        if client is None or client.closed:
            return False
        client.closed = True
        for task in client.tasks:
            task.cancel()
        await client.pc.close()
        client.pc.remove_all_listeners()  # its handlers hold the client: no cycle is left for the collector
        client.channel = None
        await asyncio.get_running_loop().run_in_executor(None, client.session.close, CLOSE_TIMEOUT_S)
        client.session.on_rendered = lambda: None
        self.sessions_closed += 1
        gc.collect()  # what is left of aiortc's objects goes now, not at the collector's next full pass
        log.info("web session %s closed (%d left)", session_id[:6], len(self.clients))
        return True

    def _client(self, request: Any) -> Client | None:
        return self.clients.get(request.match_info["id"])

    async def _control(self, request: Any) -> Any:
        from aiohttp import web

        client = self._client(request)
        if client is None:
            return _json_error(404, "no such session (it ended): reload the page")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("settings", {}), dict):
            return _json_error(400, "expected a JSON object {avatar?, generator?, settings?: {...}, recalibrate?}")
        session = client.session
        try:
            if "generator" in body:
                if body["generator"] not in self.generators:
                    raise ValueError(f"generator {body['generator']!r} is not offered here: choose one of "
                                     f"{', '.join(self.generators)}")
                session.select_generator(str(body["generator"]))
            if "avatar" in body:
                if body["avatar"] not in self.library.names():
                    raise ValueError(f"no avatar named {body['avatar']!r}: choose one of "
                                     f"{', '.join(self.library.names())}")
                session.select_avatar(str(body["avatar"]))
            settings = session.update(body["settings"]) if "settings" in body else session.settings
            if body.get("recalibrate"):
                session.recalibrate()
        except ValueError as exc:
            return _json_error(400, str(exc))
        return web.json_response({"settings": settings.as_dict()})

    async def _upload(self, request: Any) -> Any:
        from aiohttp import web

        client = self._client(request)
        if client is None:
            return _json_error(404, "no such session (it ended): reload the page")
        limit = int(self.config.web.max_upload_mb * 2**20)
        if request.content_length is not None and request.content_length > limit:
            return _json_error(413, f"the picture is larger than the {self.config.web.max_upload_mb:g} MB limit "
                               "(web.max_upload_mb): upload a smaller copy")
        data = await request.read()
        size = client.session.reenactor.canvas_size
        try:
            avatar = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.library.from_upload(data, size, max_bytes=limit))
        except FaceMimicError as exc:
            return _json_error(422, str(exc))
        client.session.use_avatar(avatar)
        return web.json_response({"avatar": avatar.name})

    async def _close_request(self, request: Any) -> Any:
        from aiohttp import web

        closed = await self.close_client(request.match_info["id"])
        return web.json_response({"closed": closed})

    async def _shutdown(self, app: Any) -> None:
        await asyncio.gather(*(self.close_client(i) for i in list(self.clients)))
        self.library.close()


@dataclass(frozen=True)
class Listening:
    """Where the page is served and how to open it."""

    urls: list[str]
    """URLs to open (with ?token=... when a token is required)."""
    token: str | None
    secure: bool


def _lan_addresses() -> list[str]:
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found or ["127.0.0.1"]


def url_hosts(host: str) -> list[str]:
    """The addresses the page is announced on for web.host: this machine's IPv4 addresses for 0.0.0.0 and ::,
    else the host itself."""
    return _lan_addresses() if host in ("0.0.0.0", "::") else [host]


def security(config: Config) -> tuple[str | None, ssl.SSLContext | None]:
    """(token, TLS context) for web.host: none on localhost unless configured; on a network address a token
    (web.token or a random one) and HTTPS (--cert/--key, or a self-signed certificate made on first use that
    names every address of url_hosts)."""
    from avatarcam.web.tls import self_signed, server_context

    web_config = config.web
    if (web_config.cert is None) != (web_config.key is None):
        raise ConfigError("give both --cert and --key (web.cert, web.key), or neither for a self-signed certificate")
    local = is_local(web_config.host)
    token = web_config.token or (None if local else secrets.token_urlsafe(18))
    if web_config.cert is not None and web_config.key is not None:
        return token, server_context(project_path(web_config.cert), project_path(web_config.key))
    if local:
        return token, None
    cert, key = self_signed(project_path(web_config.tls_dir), [web_config.host, *url_hosts(web_config.host)])
    return token, server_context(cert, key)


def _urls(config: Config, token: str | None, secure: bool) -> list[str]:
    hosts = url_hosts(config.web.host)
    query = f"?token={urllib.parse.quote(token, safe='')}" if token else ""  # a token with spaces or & still works
    scheme = "https" if secure else "http"
    return [f"{scheme}://{'[' + h + ']' if ':' in h else h}:{config.web.port}/{query}" for h in hosts]


async def _start(config: Config) -> tuple[Any, WebServer, Listening]:
    from aiohttp import web

    token, context = security(config)
    server = WebServer(config, token=token, secure=context is not None)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    if context is None:
        site = web.TCPSite(runner, config.web.host, config.web.port)
    else:  # TLS, and a redirect for a plain http:// request instead of a closed connection
        from avatarcam.web.tls import https_site

        site = https_site(runner, config.web.host, config.web.port, context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {config.web.host}:{config.web.port} ({exc.strerror}): choose another "
                          "port with --port") from None
    return runner, server, Listening(urls=_urls(config, token, context is not None), token=token,
                                     secure=context is not None)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX); True when applied.

    Every visitor brings threads (its session, the video decoder, executor work) that come and go; glibc gives
    threads their own arenas, which keep their memory after the thread ends, so the server's RSS climbed with
    each connect/disconnect until the arena count saturated. tools/bench_web.py's memory check measures both.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, arenas))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc (musl): nothing to cap
        return False


def quiet_webrtc_logs() -> None:
    """aioice logs every ICE candidate pair check at INFO (a dozen lines per visitor): keep them for --log-level
    DEBUG, show only their warnings otherwise."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)


def serve(config: Config, *, stop: threading.Event | None = None,
          on_ready: Callable[[Listening], None] | None = None) -> int:
    """Serve the page until Ctrl+C or `stop` (cli sets it on SIGTERM); prints the URL(s). Every session's
    connection and thread is closed before it returns; returns the exit code, 0."""
    stop = stop or threading.Event()
    limit_malloc_arenas()
    quiet_webrtc_logs()

    async def main() -> None:
        runner, server, listening = await _start(config)
        (on_ready or _print_ready)(listening)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()  # on_shutdown closes every session
            log.info("web server stopped (%d session%s closed)", server.sessions_closed,
                     "" if server.sessions_closed == 1 else "s")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _print_ready(listening: Listening) -> None:
    print("FaceMimic in the browser: open " + " or ".join(listening.urls), flush=True)
    if listening.secure:
        print("  (HTTPS with a certificate your browser does not know yet: accept it once; the token in the URL "
              "is the password, share it only with people you let in)", flush=True)
    print("  Ctrl+C stops the server", flush=True)


class Background:
    """The server on its own thread and event loop (tests, benchmarks): `with Background(config) as b: b.urls`."""

    def __init__(self, config: Config):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: WebServer | None = None
        self.listening: Listening | None = None
        self._thread = threading.Thread(target=self._run, name="web-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            try:
                runner, self.server, self.listening = await _start(self.config)
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop.run_until_complete(main())
        self._loop.close()

    def call(self, coroutine: Any, timeout_s: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def __enter__(self) -> Background:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (closing every session) and its thread; idempotent."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(30)
