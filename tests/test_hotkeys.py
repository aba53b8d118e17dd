"""avatarcam.hotkeys: binding validation, key codes, and real pynput / OpenCV key delivery under Xvfb."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from avatarcam import hotkeys
from avatarcam.commands import Command
from avatarcam.errors import HotkeyError
from avatarcam.hotkeys import (CommandInbox, GlobalHotkeyListener, parse_global_bindings, parse_preview_bindings,
                               preview_key_to_command)

try:
    import xvfb_util
except ImportError:  # tests/ imported as a package
    from tests import xvfb_util


# --------------------------------------------------------------------------------------------- validation


def test_defaults_are_valid_and_complete() -> None:
    global_bindings = parse_global_bindings()
    preview_bindings = parse_preview_bindings()
    assert global_bindings[Command.NEXT_AVATAR] == "<ctrl>+<alt>+n"
    assert all(spec.startswith("<ctrl>+<alt>+") for spec in global_bindings.values())
    assert Command.QUIT not in global_bindings  # no global quit: a stray combo must not end a call's camera
    assert set(preview_bindings) == set(Command)
    assert all(len(key) == 1 for key in preview_bindings.values())
    rows = hotkeys.bindings_table()
    assert ("avatar_1", "<ctrl>+<alt>+1", "1") in rows and ("quit", "", "q") in rows


def test_user_bindings_merge_normalise_and_unbind() -> None:
    parsed = parse_global_bindings({"next_avatar": "<Alt>+<CTRL>+M", "freeze": None, "quit": "<ctrl>+<alt>+<f12>"})
    assert parsed[Command.NEXT_AVATAR] == "<ctrl>+<alt>+m"
    assert Command.FREEZE not in parsed
    assert parsed[Command.QUIT] == "<ctrl>+<alt>+<f12>"
    assert parsed[Command.AVATAR_1] == "<ctrl>+<alt>+1"
    only = parse_global_bindings({"recalibrate": "<cmd>+<shift>+r"}, use_defaults=False)
    assert only == {Command.RECALIBRATE: "<shift>+<cmd>+r"}  # canonical modifier order: ctrl, alt, shift, cmd


@pytest.mark.parametrize("raw, fragments", [
    ({"avatar_10": "<ctrl>+<alt>+x"}, ["hotkeys.global_keys.avatar_10", "unknown command 'avatar_10'",
                                       "avatar_1, avatar_2", "quit"]),
    ({"next_avatar": "ctrl+alt+n"}, ["hotkeys.global_keys.next_avatar = 'ctrl+alt+n'", "'ctrl' is not a key",
                                     "<ctrl>, <alt>, <shift>, <cmd>", "'<ctrl>+<alt>+n'"]),
    ({"next_avatar": "<ctrl>+<alt>+<nope>"}, ["unknown key <nope>", "<f1>..<f20>"]),
    ({"next_avatar": "<ctrl>+<alt>+"}, ["empty part"]),
    ({"next_avatar": "<ctrl>+<alt>"}, ["exactly one non-modifier key"]),
    ({"next_avatar": "<ctrl>+<alt>+n+m"}, ["exactly one non-modifier key"]),
    ({"next_avatar": "<ctrl>+<ctrl>+n"}, ["appears twice"]),
    ({"next_avatar": "<ctrl_l>+<alt>+n"}, ["<ctrl_l> is not supported", "use <ctrl>"]),
    ({"next_avatar": "n"}, ["needs <ctrl>, <alt> or <cmd>", "typing"]),
    ({"next_avatar": "<shift>+n"}, ["needs <ctrl>, <alt> or <cmd>"]),
    ({"next_avatar": 5}, ["expected a key combination"]),
    ({"next_avatar": "<alt>+<ctrl>+1"}, ["hotkeys.global_keys.next_avatar = '<alt>+<ctrl>+1' is the same key as "
                                         "hotkeys.global_keys.avatar_1 (a default)", "set hotkeys.global_keys.avatar_1 to null"]),
    ({"next_avatar": "<ctrl>+<alt>+x", "freeze": "<ctrl>+<alt>+X"}, ["hotkeys.global_keys.next_avatar = '<ctrl>+<alt>+x' "
                                                                    "is the same key as hotkeys.global_keys.freeze ("]),
])
def test_bad_global_bindings_name_the_binding_and_the_allowed_values(raw: dict, fragments: list[str]) -> None:
    with pytest.raises(HotkeyError) as info:
        parse_global_bindings(raw)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("raw, fragments", [
    ({"next_avatar": "ctrl+n"}, ["hotkeys.preview_keys.next_avatar = 'ctrl+n'", "single ASCII character", "<esc>"]),
    ({"next_avatar": "<ctrl>+n"}, ["modifiers such as <ctrl> are not seen"]),
    ({"next_avatar": "1"}, ["is the same key as hotkeys.preview_keys.avatar_1"]),
    ({"jump": "j"}, ["unknown command 'jump'", "next_avatar"]),
    ({"next_avatar": "é"}, ["single ASCII character"]),
])
def test_bad_preview_bindings(raw: dict, fragments: list[str]) -> None:
    with pytest.raises(HotkeyError) as info:
        parse_preview_bindings(raw)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_not_a_mapping() -> None:
    with pytest.raises(HotkeyError, match="expected a mapping of command name"):
        parse_global_bindings(["<ctrl>+<alt>+n"])  # type: ignore[arg-type]


def test_preview_key_codes() -> None:
    assert preview_key_to_command(ord("n")) is Command.NEXT_AVATAR
    assert preview_key_to_command(ord("N")) is Command.NEXT_AVATAR  # caps lock
    assert preview_key_to_command(ord("1")) is Command.AVATAR_1
    assert preview_key_to_command(ord("+")) is Command.INTENSITY_UP
    assert preview_key_to_command(ord("q")) is Command.QUIT
    assert preview_key_to_command(-1) is None
    assert preview_key_to_command(ord("z")) is None
    assert preview_key_to_command(0xFF51) is None  # Left arrow from waitKeyEx; its low byte is 'Q'
    keymap = hotkeys.preview_keycode_map({"quit": "<esc>", "next_avatar": "<space>"})
    assert preview_key_to_command(27, keymap) is Command.QUIT
    assert preview_key_to_command(32, keymap) is Command.NEXT_AVATAR
    assert preview_key_to_command(ord("q"), keymap) is None


def test_inbox_drops_the_other_sources_echo_only() -> None:
    inbox = CommandInbox(dedupe_s=0.5)
    assert inbox.put(Command.NEXT_AVATAR, source="global")
    assert not inbox.put(Command.NEXT_AVATAR, source="preview")  # the same key press seen by the focused window
    assert inbox.put(Command.NEXT_AVATAR, source="global")  # a second press is a second command
    assert inbox.put(Command.FREEZE, source="preview")
    assert inbox.drain() == [Command.NEXT_AVATAR, Command.NEXT_AVATAR, Command.FREEZE]
    assert inbox.drain() == []


# --------------------------------------------------------------------------------------------- no display


def test_listener_without_display_logs_one_line_and_carries_on(monkeypatch, caplog) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    received: list[Command] = []
    listener = GlobalHotkeyListener(None, received.append, system="Linux")
    with caplog.at_level(logging.INFO, logger="avatarcam.hotkeys"):
        assert listener.start() is False
    assert not listener.active and "DISPLAY is unset" in (listener.note or "")
    lines = [r.getMessage() for r in caplog.records if r.name == "avatarcam.hotkeys"]
    assert len(lines) == 1 and lines[0].startswith("Global hotkeys off:") and "\n" not in lines[0]
    listener.stop()
    listener.stop()


def test_listener_with_an_unreachable_display_does_not_abort() -> None:
    # In a child process: a failed pynput import must not leave this process's pynput half-imported.
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from avatarcam.hotkeys import GlobalHotkeyListener\n"
        "listener = GlobalHotkeyListener(None, print)\n"
        "print('started', listener.start())\n"
        "listener.stop()\n"
    )
    env = {**os.environ, "DISPLAY": ":1999"}
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=str(xvfb_util.PROJECT_ROOT), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "started False" in result.stdout
    assert "Global hotkeys off: pynput could not start" in result.stdout


# --------------------------------------------------------------------------------------------- real X11


def test_real_global_hotkeys_under_xvfb(display, monkeypatch) -> None:
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    received: list[Command] = []
    arrived = threading.Event()

    def on_command(command: Command) -> None:
        received.append(command)
        arrived.set()

    listener = GlobalHotkeyListener(None, on_command)
    assert listener.start(), listener.note
    try:
        assert listener.active
        for combo, expected in (("ctrl+alt+n", Command.NEXT_AVATAR), ("ctrl+alt+1", Command.AVATAR_1),
                                ("ctrl+alt+Next", Command.INTENSITY_DOWN)):
            arrived.clear()
            assert xvfb_util.xdotool(display, "key", combo).returncode == 0
            assert arrived.wait(3.0), f"{combo} did not arrive"
            assert received[-1] is expected
        count = len(received)
        xvfb_util.xdotool(display, "type", "n1 typing in a chat")  # plain keys: never a command
        time.sleep(0.3)
        assert len(received) == count
    finally:
        listener.stop()
    assert not listener.active
    listener.raise_if_failed()


def test_a_failing_handler_keeps_the_listener_alive(display, monkeypatch) -> None:
    monkeypatch.setenv("DISPLAY", display)
    calls: list[Command] = []

    def on_command(command: Command) -> None:
        calls.append(command)
        raise RuntimeError("handler bug")

    listener = GlobalHotkeyListener({"freeze": "<ctrl>+<alt>+f"}, on_command)
    assert listener.start()
    try:
        for _ in range(2):
            xvfb_util.xdotool(display, "key", "ctrl+alt+f")
            time.sleep(0.2)
        assert calls == [Command.FREEZE, Command.FREEZE] and listener.active
    finally:
        listener.stop()
    with pytest.raises(HotkeyError, match="handler bug"):
        listener.raise_if_failed()


def test_preview_window_keys_under_xvfb(display) -> None:
    child = xvfb_util.PreviewChild(display, title="FaceMimic keys test")
    try:
        child.wait_ready()
        xvfb_util.focus_window(display, child.title)
        for key, expected in (("n", "next_avatar"), ("1", "avatar_1"), ("c", "recalibrate"), ("plus", "intensity_up"),
                              ("Left", None), ("q", "quit")):
            xvfb_util.xdotool(display, "key", key)
            message = child.next_message(3.0 if expected else 0.5)
            if expected is None:
                assert message is None, f"{key} produced {message}"
            else:
                assert message == {"event": "command", "command": expected}, (key, message, child.stderr_tail())
        done = child.next_message(5.0)
        assert done is not None and done["event"] == "done" and done["frame_unchanged"]
    finally:
        assert child.finish() == 0
