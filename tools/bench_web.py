"""Benchmark the browser mode: clients served at once, per-client fps and latency, end-to-end delay, memory.

    python tools/bench_web.py --json OUT.json [--sizes 256 512] [--max-clients 4] [--seconds 6] [--cycles 50]

The server is `python run.py --serve` in a child process (so its memory is its own); the clients are aiortc
peers in this process that send the sample clip as a 640x480, 30 fps camera (as a browser's camera would) and
receive the avatar video and the page's data channel. On a small machine the clients' own VP8 encoding and
decoding share the CPU with the server: the numbers are then a lower bound for a server whose visitors are on
other computers. Say what else ran on the machine when you quote them.

Measured, per canvas size and number of clients at once: each client's avatar frames per second (new avatar
frames, from the data channel; repeats of an unchanged frame are not counted) and the server's latency (arrival
of the camera frame to the end of rendering, p50/p95). End to end: every camera frame carries its number as 8
black/white blocks at the top of the picture; with the session's passthrough view the number comes back in the
returned video, and the delay is the time from handing frame k to the WebRTC sender to decoding the returned frame
showing k (so it contains encode, network, decode, landmarks and the server's canvas, but not the avatar
rendering: the avatar figure is that plus the avatar-minus-passthrough server latency, reported as an estimate).
Memory: the server's RSS across --cycles connect/disconnect cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from avatarcam.timing import percentiles_ms

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = ROOT / "avatarcam" / "samples" / "driver.mp4"
CAMERA_FPS = 30
MIN_FPS = 15.0
"""A configuration 'serves' its clients when every one of them gets at least this many avatar frames per second."""
MARKER_BITS = 8
MARKER_BLOCK = 16
MARKER_X0 = 96  # inside the centre 480x480 square of the 640x480 camera picture (what passthrough keeps)


def load_camera_frames(clip: Path, count: int, marker: bool) -> list[np.ndarray]:
    """The clip's first `count` frames as 640x480 I420 planes ((720, 640) uint8), each with its number drawn."""
    import av
    import cv2

    frames = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            h, w = image.shape[:2]
            scaled = cv2.resize(image, (round(w * 480 / h), 480), interpolation=cv2.INTER_AREA)[:, :640]
            canvas = np.full((480, 640, 3), 128, np.uint8)
            x0 = (640 - scaled.shape[1]) // 2
            canvas[:, x0:x0 + scaled.shape[1]] = scaled
            frames.append(canvas)
            if len(frames) >= count:
                break
    out = []
    for number, canvas in enumerate(frames):
        if marker:
            canvas = canvas.copy()
            for bit in range(MARKER_BITS):
                x = MARKER_X0 + bit * MARKER_BLOCK
                canvas[0:MARKER_BLOCK, x:x + MARKER_BLOCK] = 255 if (number >> bit) & 1 else 0
        out.append(cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420))
    return out


def read_marker(image_bgr: np.ndarray) -> int:
    """The frame number drawn by load_camera_frames, from a passthrough canvas (the camera's centre square)."""
    scale = image_bgr.shape[1] / 480
    gray = image_bgr.mean(axis=2)
    number = 0
    for bit in range(MARKER_BITS):
        x = (MARKER_X0 - 80 + bit * MARKER_BLOCK + MARKER_BLOCK / 2) * scale
        if gray[int(MARKER_BLOCK / 2 * scale), int(x)] > 128:
            number |= 1 << bit
    return number


class Server:
    """`python run.py --serve` in a child process on a free localhost port."""

    def __init__(self, size: int, max_clients: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--serve", "--port", str(self.port), "--canvas-size", str(size),
             "--set", f"web.max_clients={max_clients}", "--log-level", "ERROR"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = re.search(r"(http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise SystemExit(f"the server did not start (exit code {self.process.wait()})")

    def cpu_s(self) -> float:
        """CPU time (user + system, all threads) the server has used, in seconds."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class BenchClient:
    """One simulated visitor: sends the camera frames at 30 fps and records what comes back."""

    def __init__(self, frames: list[np.ndarray], *, passthrough: bool):
        self.frames = frames
        self.passthrough = passthrough
        self.sent_s: dict[int, float] = {}
        self.meta: list[tuple[float, dict]] = []
        self.video_s: list[float] = []
        self.delays_ms: list[float] = []
        self.pc = None
        self.session: str | None = None

    def _camera(self):
        from aiortc import VideoStreamTrack
        from av import VideoFrame

        client = self

        class Camera(VideoStreamTrack):
            def __init__(self) -> None:
                super().__init__()
                self.count = 0

            async def recv(self):
                pts, time_base = await self.next_timestamp()
                k = self.count % len(client.frames)
                frame = VideoFrame.from_ndarray(client.frames[k], format="yuv420p")
                frame.pts, frame.time_base = pts, time_base
                client.sent_s[k % 256] = time.perf_counter()
                self.count += 1
                return frame

        return Camera()

    async def _receive(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            self.video_s.append(now)
            if self.passthrough:
                k = read_marker(frame.to_ndarray(format="bgr24"))
                if k in self.sent_s:
                    self.delays_ms.append((now - self.sent_s[k]) * 1000)

    async def connect(self, http, url: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("meta")
        channel.on("message", lambda m: self.meta.append((time.perf_counter(), json.loads(m))))
        pc.addTrack(self._camera())
        pc.on("track", lambda track: asyncio.ensure_future(self._receive(track)))
        await pc.setLocalDescription(await pc.createOffer())
        settings = {"passthrough": True, "mirror": False} if self.passthrough else {}
        async with http.post(url + "api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer",
                                                      "settings": settings}) as response:
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"offer refused: {body}")
        self.session = body["session"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))

    async def close(self, http, url: str) -> None:
        if self.session:
            async with http.post(f"{url}api/session/{self.session}/close") as response:
                await response.read()
        if self.pc is not None:
            await self.pc.close()

    def summary(self, start_s: float, end_s: float) -> dict:
        metas = [m for t, m in self.meta if start_s <= t < end_s]
        seqs = {m["seq"] for m in metas}
        seconds = end_s - start_s
        return {"avatar_fps": round(len(seqs) / seconds, 1),
                "video_fps": round(sum(start_s <= t < end_s for t in self.video_s) / seconds, 1),
                "server_latency_ms": percentiles_ms([m["latency_ms"] for m in metas])}


async def _run_clients(server: Server, frames: list[np.ndarray], count: int, *, warm_s: float, seconds: float,
                       passthrough: bool = False) -> tuple[list[BenchClient], float]:
    """Connect `count` clients at once, measure for `seconds` after `warm_s`; (clients, server CPU seconds in the
    measured window)."""
    import aiohttp

    url = server.url
    async with aiohttp.ClientSession() as http:
        clients = [BenchClient(frames, passthrough=passthrough) for _ in range(count)]
        try:
            await asyncio.gather(*(c.connect(http, url) for c in clients))
            deadline = time.perf_counter() + 30
            while not all(c.meta for c in clients) and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(warm_s)
            for c in clients:
                c.delays_ms.clear()
            start, cpu_start = time.perf_counter(), server.cpu_s()
            await asyncio.sleep(seconds)
            cpu_used = server.cpu_s() - cpu_start
            for c in clients:
                c.window = (start, time.perf_counter())  # type: ignore[attr-defined]
        finally:
            await asyncio.gather(*(c.close(http, url) for c in clients), return_exceptions=True)
    return clients, cpu_used


def bench_load(size: int, max_clients: int, frames: list[np.ndarray], warm_s: float, seconds: float) -> dict:
    server = Server(size, max_clients)
    rows = []
    try:
        for count in range(1, max_clients + 1):
            clients, cpu_s = asyncio.run(_run_clients(server, frames, count, warm_s=warm_s, seconds=seconds))
            per_client = [c.summary(*c.window) for c in clients]  # type: ignore[attr-defined]
            rendered = sum(p["avatar_fps"] for p in per_client) * seconds
            # CPU per avatar frame depends little on what else runs: it says what a quiet machine could serve.
            rows.append({"clients": count, "per_client": per_client,
                         "min_avatar_fps": min(p["avatar_fps"] for p in per_client),
                         "server_cpu_ms_per_avatar_frame": round(1000 * cpu_s / max(rendered, 1), 1)})
            print(f"  canvas {size}: {count} client(s): avatar fps "
                  f"{', '.join(str(p['avatar_fps']) for p in per_client)}; server latency p50 "
                  f"{', '.join(str(p['server_latency_ms']['p50']) for p in per_client)} ms; server CPU "
                  f"{rows[-1]['server_cpu_ms_per_avatar_frame']} ms per avatar frame", file=sys.stderr)
    finally:
        server.stop()
    served = max([r["clients"] for r in rows if r["min_avatar_fps"] >= MIN_FPS], default=0)
    return {"canvas_size": size, "clients_served": served, "runs": rows}


def bench_delay(size: int, frames: list[np.ndarray], warm_s: float, seconds: float) -> dict:
    server = Server(size, 2)
    try:
        passthrough = asyncio.run(_run_clients(server, frames, 1, warm_s=warm_s, seconds=seconds,
                                               passthrough=True))[0][0]
        avatar = asyncio.run(_run_clients(server, frames, 1, warm_s=warm_s, seconds=seconds))[0][0]
    finally:
        server.stop()
    through = passthrough.summary(*passthrough.window)  # type: ignore[attr-defined]
    rendered = avatar.summary(*avatar.window)  # type: ignore[attr-defined]
    delay = percentiles_ms(passthrough.delays_ms)
    extra = rendered["server_latency_ms"]["p50"] - through["server_latency_ms"]["p50"]
    return {"canvas_size": size, "marker_frames": len(passthrough.delays_ms),
            "passthrough_end_to_end_ms": delay, "passthrough_server_latency_ms": through["server_latency_ms"],
            "avatar_server_latency_ms": rendered["server_latency_ms"],
            "avatar_end_to_end_estimate_ms_p50": round(delay["p50"] + extra, 1)}


def bench_memory(size: int, frames: list[np.ndarray], cycles: int) -> dict:
    import aiohttp

    server = Server(size, 2)
    rss: list[float] = []

    async def cycle_all() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(cycles):
                client = BenchClient(frames, passthrough=False)
                await client.connect(http, server.url)
                deadline = time.perf_counter() + 20
                while not client.meta and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                await client.close(http, server.url)
                await asyncio.sleep(0.3)  # the server closes the session's thread
                rss.append(server.rss_mb())

    try:
        asyncio.run(cycle_all())
    finally:
        server.stop()
    half = len(rss) // 2
    # A leak raises the level cycle after cycle: compare the highest RSS of the second half with the first's
    # (after 5 warm-up cycles: the first sessions load MediaPipe's and the codecs' shared parts).
    first, second = max(rss[min(5, half - 1):half] or rss[:1]), max(rss[half:] or rss[-1:])
    return {"cycles": len(rss), "rss_mb_after_cycle_5": round(rss[min(4, len(rss) - 1)], 1),
            "rss_mb_at_end": round(rss[-1], 1), "max_rss_mb_first_half": round(first, 1),
            "max_rss_mb_second_half": round(second, 1), "growth_mb_second_half_over_first": round(second - first, 1),
            "rss_mb": [round(v, 1) for v in rss]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here (and print a summary)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--max-clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per configuration")
    parser.add_argument("--warm", type=float, default=2.0, help="seconds after the first avatar frame before measuring")
    parser.add_argument("--cycles", type=int, default=50, help="connect/disconnect cycles of the memory check")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--only", choices=("load", "delay", "memory"), nargs="+",
                        default=["load", "delay", "memory"], help="run only these parts")
    args = parser.parse_args()
    frames = load_camera_frames(args.clip, 255, marker=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
                     "camera": f"640x480 at {CAMERA_FPS} fps, {args.clip.name}", "min_fps_to_serve": MIN_FPS}
    if "load" in args.only:
        print("load: clients at once per canvas size", file=sys.stderr)
        results["load"] = [bench_load(size, args.max_clients, frames, args.warm, args.seconds)
                           for size in args.sizes]
    if "delay" in args.only:
        print("end-to-end delay (frame markers)", file=sys.stderr)
        results["delay"] = bench_delay(max(args.sizes), frames, args.warm, args.seconds)
    if "memory" in args.only and args.cycles:
        print(f"memory: {args.cycles} connect/disconnect cycles", file=sys.stderr)
        results["memory"] = bench_memory(min(args.sizes), frames, args.cycles)
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text)
    summary = {k: v for k, v in results.items() if k != "memory"}
    if "memory" in results:
        summary["memory"] = {k: v for k, v in results["memory"].items() if k != "rss_mb"}
    print(json.dumps(summary, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
