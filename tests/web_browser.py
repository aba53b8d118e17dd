"""Test helpers for the browser mode: a network namespace for WebRTC, a y4m fake camera and headless Chromium
driven over the Chrome DevTools Protocol (CDP) on a pipe.

Why a namespace: ICE (both Chromium's and aioice's) ignores 127.0.0.1 and the loopback interface, so the test
creates a veth pair with its own addresses: one end stays here (the server listens on it), the other lives in a
namespace where Chromium runs. Why a pipe: Chromium's DevTools port would be on the namespace's own loopback,
out of reach; `--remote-debugging-pipe` (CDP as NUL-terminated JSON on fds 3 and 4) crosses namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

Y4M_HEADER = b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n"


def browser_skip_reason() -> str | None:
    """Why the browser tests cannot run here (not root, no chromium, no `ip`), or None."""
    import importlib.util

    if importlib.util.find_spec("aiortc") is None:
        return "the browser mode's packages are not installed: python tools/install.py --web"
    if os.geteuid() != 0:
        return "the browser tests create a network namespace (ICE ignores loopback), which needs root"
    if chromium_path() is None:
        return "no chromium: install it with `python tools/install.py --dev` (Debian/Ubuntu) or your package manager"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to create the network namespace"
    return None


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_y4m(source: Path, out: Path, *, frames: int) -> Path:
    """Convert the first `frames` frames of a video into a 640x480 30 fps y4m (Chromium's fake camera format).

    The picture is scaled to 480 px high and centred on mid-grey.
    """
    import av
    import cv2

    with av.open(str(source)) as container, out.open("wb") as f:
        f.write(Y4M_HEADER)
        count = 0
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            h, w = image.shape[:2]
            scaled = cv2.resize(image, (round(w * 480 / h), 480), interpolation=cv2.INTER_AREA)[:, :640]
            canvas = np.full((480, 640, 3), 128, np.uint8)
            x0 = (640 - scaled.shape[1]) // 2
            canvas[:, x0:x0 + scaled.shape[1]] = scaled
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420).tobytes())
            count += 1
            if count >= frames:
                break
    return out


class Namespace:
    """A network namespace joined to this one by a veth pair: host_ip here, ns_ip inside."""

    def __init__(self, tag: str, subnet: int):
        self.name = f"fmweb{tag}"
        self.host_if, self.ns_if = f"fmw{tag}h", f"fmw{tag}n"
        self.host_ip, self.ns_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"

    def __enter__(self) -> Namespace:
        self._cleanup()
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.name],
            # No IPv6 on either end: its addresses appear a second or two after the link comes up (duplicate address
            # detection), which Chromium reports as a network change (ERR_NETWORK_CHANGED) on a page loading then.
            ["sysctl", "-q", "-w", f"net.ipv6.conf.{self.host_if}.disable_ipv6=1"],
            ["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
            ["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"],
            ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            self._cleanup()
            raise RuntimeError(f"{' '.join(exc.cmd)} failed: {exc.stderr.strip()}") from None
        return self

    def _cleanup(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)  # takes its veth end along
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self._cleanup()


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium in `namespace` with a y4m fake camera, driven over CDP on a pipe."""

    def __init__(self, namespace: Namespace, y4m: Path, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m.resolve()}", "--ignore-certificate-errors",
            "--disable-features=WebRtcHideLocalIpsWithMdns", "--window-size=1200,1000",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
        ]
        # bash moves the pipe ends onto the fds 3 and 4 that --remote-debugging-pipe uses.
        script = (f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-')
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace.name, "bash", "-c", script, chromium_path() or "chromium", *flags],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace"))
            del self._stderr[:-50]

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._replies[-1] = {"closed": True}
                    self._arrived.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._arrived:
                        self._replies[message["id"]] = message
                        self._arrived.notify_all()

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout_s: float = 30.0) -> dict:
        """One CDP command; its result, or CDPError."""
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while call_id not in self._replies:
                if -1 in self._replies:
                    raise CDPError(f"chromium exited; its last messages: {''.join(self._stderr)[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"{method}: no reply within {timeout_s} s")
                self._arrived.wait(left)
            reply = self._replies.pop(call_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str) -> Tab:
        """A new tab at `url`. A page that Chromium aborted with ERR_NETWORK_CHANGED (its network watcher seeing the
        test's namespace settle, not anything the server did) is loaded again, up to three times."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, target, session)
        for _ in range(3):
            text = tab.wait_for("document.readyState === 'complete' && (document.body.innerText || ' ')", 20)
            if "ERR_NETWORK_CHANGED" not in text:
                break
            time.sleep(1.0)
            self.send("Page.reload", {}, session=session)
            time.sleep(0.5)  # the aborted page stays "complete" until the reload replaces it
        return tab

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5)
        except CDPError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)


class Tab:
    """One page in Chromium."""

    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def eval(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its JSON value, or CDPError with the exception."""
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                        "returnByValue": True}, session=self.session,
                                   timeout_s=timeout_s)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll `expression` until it is truthy; its value, or CDPError with the page's state after timeout_s."""
        deadline = time.monotonic() + timeout_s
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while time.monotonic() < deadline:
            try:
                value = self.eval(guarded)
            except CDPError as exc:  # between two documents (a redirect): no page to ask for a moment
                if "execution context" not in str(exc).lower():
                    raise
                value = None
            if value:
                return value
            time.sleep(0.2)
        state = self.eval("typeof facemimic === 'undefined' ? document.body.innerText : JSON.stringify({"
                          "phase: facemimic.phase, message: facemimic.message, stats: facemimic.stats, "
                          "meta: facemimic.meta && {...facemimic.meta, points: undefined}})")
        raise CDPError(f"{expression} still false after {timeout_s} s; page state: {state}")

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
