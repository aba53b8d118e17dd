"""The LivePortrait download step against a local HTTP server with the hub's API shape (not the real hub)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from avatarcam.errors import ModelFileError
from avatarcam.generators.liveportrait.download import HUB_FILES, download_liveportrait

TINY = Path(__file__).resolve().parent / "fixtures" / "liveportrait" / "tiny-weights"


@pytest.fixture
def hub(tmp_path):
    """A folder served on 127.0.0.1: repo files under /resolve/main/..., tree listings under /api/.../tree/main/..."""
    root = tmp_path / "server"
    for path in HUB_FILES:
        target = root / "resolve" / "main" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TINY / path.removeprefix("liveportrait/"), target)
    for folder in {p.rsplit("/", 1)[0] for p in HUB_FILES}:
        entries = []
        for path in HUB_FILES:
            if path.rsplit("/", 1)[0] == folder:
                data = (root / "resolve" / "main" / path).read_bytes()
                entries.append({"type": "file", "path": path, "size": len(data),
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}})
        listing = root / "api" / "tree" / "main" / folder
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(json.dumps(entries))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield root, {"api": f"{base}/api/tree/main", "resolve": f"{base}/resolve/main"}
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_downloads_verifies_and_loads(hub, tmp_path):
    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

    _, urls = hub
    lines: list[str] = []
    folder = download_liveportrait(tmp_path / "weights", progress=lines.append, **urls)
    assert folder == tmp_path / "weights" / "liveportrait"
    assert sum("sha256 verified" in line and "downloaded" in line for line in lines) == len(HUB_FILES)
    assert load_liveportrait(folder).num_kp == 21
    again: list[str] = []
    download_liveportrait(tmp_path / "weights", progress=again.append, **urls)
    assert all("present, sha256 verified" in line for line in again) and len(again) == len(HUB_FILES)


def test_damaged_download_is_refused_and_not_kept(hub, tmp_path):
    root, urls = hub
    served = root / "resolve" / "main" / HUB_FILES[3]
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")  # same size, other content
    with pytest.raises(ModelFileError, match=r"spade_generator\.pth gave .* sha256 .*expected .*run the command again"):
        download_liveportrait(tmp_path / "weights", progress=lambda line: None, **urls)
    target = tmp_path / "weights" / HUB_FILES[3]
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_unreachable_hub_says_what_to_do(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read the LivePortrait file list.*by hand"):
        download_liveportrait(tmp_path, api="http://127.0.0.1:9/api", resolve="http://127.0.0.1:9/x",
                              progress=lambda line: None)
