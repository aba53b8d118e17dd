"""Key -> command tables (global hotkeys and preview-window keys), their validation, and the global listener."""

from __future__ import annotations

import collections
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from avatarcam.commands import Command
from avatarcam.errors import HotkeyError

log = logging.getLogger(__name__)

MODIFIERS = ("ctrl", "alt", "shift", "cmd")
"""Modifier names for global combos, written <ctrl> etc., in the order a normalised combo lists them."""
_SIDED_MODIFIERS = ("ctrl_l", "ctrl_r", "alt_l", "alt_r", "alt_gr", "shift_l", "shift_r", "cmd_l", "cmd_r")
GUARD_MODIFIERS = ("ctrl", "alt", "cmd")
"""A global combo needs one of these: with none (or only <shift>), typing in a chat would fire it."""
SPECIAL_KEYS = (
    "space", "tab", "enter", "esc", "backspace", "delete", "insert", "home", "end", "page_up", "page_down",
    "up", "down", "left", "right", "menu", "pause", "print_screen", "scroll_lock",
    *(f"f{n}" for n in range(1, 21)),
    "media_play_pause", "media_volume_mute", "media_volume_down", "media_volume_up", "media_previous", "media_next",
)
"""Non-character keys a global combo may end with, written <name> (pynput's Key names)."""
PREVIEW_SPECIAL_KEYS = MappingProxyType({"esc": 27, "space": 32, "enter": 13, "tab": 9, "backspace": 8})
"""Named preview keys -> the code cv2.waitKeyEx returns for them."""

DEFAULT_GLOBAL_BINDINGS: Mapping[Command, str] = MappingProxyType({
    **{Command(f"avatar_{n}"): f"<ctrl>+<alt>+{n}" for n in range(1, 10)},
    Command.PREVIOUS_AVATAR: "<ctrl>+<alt>+p",
    Command.NEXT_AVATAR: "<ctrl>+<alt>+n",
    Command.BEST_MATCH_AVATAR: "<ctrl>+<alt>+b",
    Command.RECALIBRATE: "<ctrl>+<alt>+c",
    Command.PASSTHROUGH: "<ctrl>+<alt>+0",
    Command.FREEZE: "<ctrl>+<alt>+f",
    Command.OVERLAY: "<ctrl>+<alt>+o",
    Command.STATS: "<ctrl>+<alt>+i",
    Command.RELOAD_AVATARS: "<ctrl>+<alt>+r",
    Command.INTENSITY_UP: "<ctrl>+<alt>+<page_up>",
    Command.INTENSITY_DOWN: "<ctrl>+<alt>+<page_down>",
    Command.SNAPSHOT: "<ctrl>+<alt>+s",
    Command.BADGE: "<ctrl>+<alt>+v",
})
"""Global combos: Ctrl+Alt+key, so typing in a call's chat never switches avatars. quit has no global combo."""

DEFAULT_PREVIEW_BINDINGS: Mapping[Command, str] = MappingProxyType({
    **{Command(f"avatar_{n}"): str(n) for n in range(1, 10)},
    Command.PREVIOUS_AVATAR: "p",
    Command.NEXT_AVATAR: "n",
    Command.BEST_MATCH_AVATAR: "b",
    Command.RECALIBRATE: "c",
    Command.PASSTHROUGH: "0",
    Command.FREEZE: "f",
    Command.OVERLAY: "o",
    Command.STATS: "i",
    Command.RELOAD_AVATARS: "r",
    Command.INTENSITY_UP: "+",
    Command.INTENSITY_DOWN: "-",
    Command.SNAPSHOT: "s",
    Command.BADGE: "v",
    Command.HELP: "h",
    Command.QUIT: "q",
})
"""Plain keys, active only while the preview window has the focus."""


# --------------------------------------------------------------------------------------------- parsing


def _command_names() -> str:
    return ", ".join(command.value for command in Command)


def _to_command(name: Any, section: str, spec: Any) -> Command:
    if isinstance(name, Command):
        return name
    try:
        return Command(str(name).strip().lower())
    except ValueError:
        raise HotkeyError(f"{section}.{name} = {spec!r}: unknown command {name!r}; expected one of: "
                          f"{_command_names()}") from None


def _split_combo(spec: str) -> list[str]:
    """Split on '+' the way pynput does: a '+' that starts a part is the key itself ('<ctrl>++')."""
    parts, start = [], 0
    for i, char in enumerate(spec):
        if char == "+" and i != start:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def normalize_global_spec(spec: Any, *, where: str = "hotkeys.global_keys") -> str:
    """Validate a pynput-style combo ('<ctrl>+<alt>+n') and return it in canonical form; HotkeyError if malformed."""
    example = "'<ctrl>+<alt>+n'"
    allowed = (f"a single character (e.g. 'n', '1') or a key name in angle brackets: "
               f"{', '.join(f'<{m}>' for m in MODIFIERS)}, <f1>..<f20>, "
               f"{', '.join(f'<{k}>' for k in SPECIAL_KEYS if not k.startswith(('f', 'media')))}")
    if not isinstance(spec, str) or not spec.strip():
        raise HotkeyError(f"{where} = {spec!r}: expected a key combination such as {example}, or null to unbind")
    text = spec.strip()
    parts = _split_combo(text)
    modifiers: list[str] = []
    keys: list[str] = []
    for part in parts:
        if part == "":
            raise HotkeyError(f"{where} = {spec!r}: empty part (a '+' at the end?); expected parts joined by '+' "
                              f"such as {example}")
        if len(part) == 1:
            if part.isspace() or not part.isprintable():
                raise HotkeyError(f"{where} = {spec!r}: {part!r} is not a printable key; use <space>, <tab>, ...")
            keys.append(part.lower())
        elif len(part) > 2 and part[0] == "<" and part[-1] == ">":
            name = part[1:-1].strip().lower()
            if name in MODIFIERS:
                modifiers.append(name)
            elif name in SPECIAL_KEYS:
                keys.append(f"<{name}>")
            elif name in _SIDED_MODIFIERS:
                raise HotkeyError(f"{where} = {spec!r}: {part} is not supported; use <{name.split('_')[0]}> "
                                  "(left and right modifiers are not told apart)")
            else:
                raise HotkeyError(f"{where} = {spec!r}: unknown key {part}; expected {allowed}")
        else:
            raise HotkeyError(f"{where} = {spec!r}: {part!r} is not a key; expected {allowed}. "
                              f"Example: {example}")
    if len(set(modifiers)) != len(modifiers) or len(set(keys)) != len(keys):
        raise HotkeyError(f"{where} = {spec!r}: a key appears twice; expected each key once, e.g. {example}")
    if len(keys) != 1:
        raise HotkeyError(f"{where} = {spec!r}: expected exactly one non-modifier key after the modifiers, "
                          f"found {len(keys)}; e.g. {example}")
    if not any(m in GUARD_MODIFIERS for m in modifiers):
        raise HotkeyError(f"{where} = {spec!r}: a global hotkey needs <ctrl>, <alt> or <cmd>, otherwise typing "
                          f"in a call's chat would trigger it; e.g. {example}")
    ordered = [m for m in MODIFIERS if m in modifiers]
    return "+".join([*(f"<{m}>" for m in ordered), keys[0]])


def normalize_preview_key(spec: Any, *, where: str = "hotkeys.preview_keys") -> str:
    """Validate a preview key ('n', '1', '+', '<esc>') and return it in canonical form; HotkeyError if malformed."""
    named = ", ".join(f"<{name}>" for name in PREVIEW_SPECIAL_KEYS)
    if isinstance(spec, str):
        text = spec.strip() if spec.strip() else spec
        if len(text) == 1 and text.isprintable() and not text.isspace() and ord(text) < 128:
            return text.lower()
        if len(text) > 2 and text[0] == "<" and text[-1] == ">" and text[1:-1].lower() in PREVIEW_SPECIAL_KEYS:
            return text.lower()
    raise HotkeyError(f"{where} = {spec!r}: expected one plain key: a single ASCII character (e.g. 'n', '1', '+') "
                      f"or one of {named}; modifiers such as <ctrl> are not seen by the preview window")


def _parse(raw: Mapping[Any, Any] | None, defaults: Mapping[Command, str], use_defaults: bool, section: str,
           normalize: Callable[..., str]) -> dict[Command, str]:
    if raw is not None and not isinstance(raw, Mapping):
        raise HotkeyError(f"{section} = {raw!r}: expected a mapping of command name -> key, e.g. "
                          f"{{next_avatar: {defaults[Command.NEXT_AVATAR]!r}}}")
    merged: dict[Command, str | None] = dict(defaults) if use_defaults else {}
    explicit: set[Command] = set()
    for name, spec in (raw or {}).items():
        command = _to_command(name, section, spec)
        explicit.add(command)
        merged[command] = None if spec is None or spec == "" else spec
    result: dict[Command, str] = {}
    owner: dict[str, Command] = {}
    # Explicit bindings first, so a clash with a default names the default as the one to change.
    for command in sorted(merged, key=lambda c: (c not in explicit, list(Command).index(c))):
        spec = merged[command]
        if spec is None:
            continue
        canonical = normalize(spec, where=f"{section}.{command.value}")
        if canonical in owner:
            other = owner[canonical]  # explicit bindings come first, so `other` is explicit if either is
            default_note = "" if command in explicit else " (a default)"
            free = command if command not in explicit or other in explicit else other
            raise HotkeyError(
                f"{section}.{other.value} = {merged[other]!r} is the same key as {section}.{command.value}"
                f"{default_note} ({canonical!r}); give one of them another key, or set {section}.{free.value} "
                "to null to unbind it"
            )
        owner[canonical] = command
        result[command] = canonical
    return {command: result[command] for command in Command if command in result}


def parse_global_bindings(raw: Mapping[Any, Any] | None = None, *, use_defaults: bool = True) -> dict[Command, str]:
    """Config `hotkeys.global_keys` (command name -> combo or null) over the defaults -> {Command: canonical combo}."""
    return _parse(raw, DEFAULT_GLOBAL_BINDINGS, use_defaults, "hotkeys.global_keys", normalize_global_spec)


def parse_preview_bindings(raw: Mapping[Any, Any] | None = None, *, use_defaults: bool = True) -> dict[Command, str]:
    """Config `hotkeys.preview_keys` (command name -> key or null) over the defaults -> {Command: canonical key}."""
    return _parse(raw, DEFAULT_PREVIEW_BINDINGS, use_defaults, "hotkeys.preview_keys", normalize_preview_key)


def preview_keycode_map(bindings: Mapping[Any, Any] | None = None) -> dict[int, Command]:
    """Preview bindings (as parse_preview_bindings returns, or None for the defaults) -> {waitKeyEx code: Command}."""
    parsed = parse_preview_bindings(bindings, use_defaults=bindings is None)
    codes: dict[int, Command] = {}
    for command, key in parsed.items():
        if len(key) == 1:
            codes[ord(key)] = command
            if key.isalpha():
                codes[ord(key.upper())] = command  # caps lock / shift: same command
        else:
            codes[PREVIEW_SPECIAL_KEYS[key[1:-1]]] = command
    # Keys every window understands, unless the user bound them to something else: Esc quits, ? shows the help.
    codes.setdefault(PREVIEW_SPECIAL_KEYS["esc"], Command.QUIT)
    if Command.HELP in parsed:
        codes.setdefault(ord("?"), Command.HELP)
    return codes


def preview_key_to_command(keycode: int, keymap: Mapping[int, Command] | None = None) -> Command | None:
    """A cv2.waitKeyEx code -> its Command, or None (-1, unbound keys, arrows and other non-ASCII keys).

    Pass waitKeyEx codes, not waitKey ones: waitKey keeps only the low byte, which turns the Left arrow (0xFF51 on
    X11) into 'Q'.
    """
    if keycode is None or keycode < 0 or keycode > 0x7F:
        return None
    if keymap is None:
        keymap = preview_keycode_map()
    return keymap.get(int(keycode))


def bindings_table(global_bindings: Mapping[Command, str] | None = None,
                   preview_bindings: Mapping[Command, str] | None = None) -> list[tuple[str, str, str]]:
    """(command, global combo, preview key) rows for every command; '' where unbound. For README tables and --help."""
    global_bindings = DEFAULT_GLOBAL_BINDINGS if global_bindings is None else global_bindings
    preview_bindings = DEFAULT_PREVIEW_BINDINGS if preview_bindings is None else preview_bindings
    return [(c.value, global_bindings.get(c, ""), preview_bindings.get(c, "")) for c in Command]


# --------------------------------------------------------------------------------------------- command inbox


class CommandInbox:
    """A bounded, thread-safe inbox for commands from the global listener and the preview window.

    Drop policy "drop-oldest" (capacity `maxlen`). The same command from the *other* source within `dedupe_s` is
    dropped: with the preview focused, Ctrl+Alt+N reaches both the global listener and the window (as 'n').
    """

    def __init__(self, *, maxlen: int = 32, dedupe_s: float = 0.4) -> None:
        self._queue: collections.deque[Command] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._dedupe_s = dedupe_s
        self._last: dict[Command, tuple[str, float]] = {}

    def put(self, command: Command, *, source: str = "global") -> bool:
        """Add a command; False when it was dropped as the other source's duplicate. Safe from any thread."""
        now = time.monotonic()
        with self._lock:
            previous = self._last.get(command)
            if previous is not None and previous[0] != source and now - previous[1] < self._dedupe_s:
                return False
            self._last[command] = (source, now)
            self._queue.append(command)
            return True

    def drain(self) -> list[Command]:
        """All waiting commands, oldest first."""
        with self._lock:
            commands = list(self._queue)
            self._queue.clear()
        return commands


# --------------------------------------------------------------------------------------------- global listener


def _global_hotkeys_unavailable(system: str) -> str | None:
    """Why pynput cannot listen here, or None."""
    if system in ("Windows", "Darwin"):
        return None
    if not os.environ.get("DISPLAY"):
        if os.environ.get("WAYLAND_DISPLAY"):
            return ("Wayland session without XWayland (DISPLAY is unset): global hotkeys need X11; "
                    "use the preview window's keys")
        return "no X display (DISPLAY is unset): use the preview window's keys"
    return None


def _wake_xorg_listener(listener: Any) -> None:
    """Make pynput's X11 listener thread end now instead of at the next key event.

    pynput's xorg stop() sends the RECORD disable request on the recording connection itself, which is blocked
    reading, so the thread lingers until a key is pressed. The X RECORD extension expects the disable on another
    connection; pynput keeps one (`_display_stop`), so send it there. Best effort: other backends lack these.
    """
    control = getattr(listener, "_display_stop", None)
    context = getattr(listener, "_context", None)
    if control is None or context is None:
        return
    try:
        control.record_disable_context(context)
        control.flush()
    except Exception as exc:  # the thread may already be closing these connections
        log.debug("waking pynput's X11 listener: %s: %s", type(exc).__name__, exc)


class GlobalHotkeyListener:
    """System-wide hotkeys through pynput; on_command(Command) runs on pynput's thread and must be quick.

    `bindings` maps command -> combo and is used as given (None: DEFAULT_GLOBAL_BINDINGS; to merge config with the
    defaults, pass parse_global_bindings(config)). With no display or a pynput that cannot start, start() logs one
    line and returns False; FaceMimic carries on without global hotkeys.
    """

    def __init__(self, bindings: Mapping[Any, Any] | None, on_command: Callable[[Command], None], *,
                 ready_timeout_s: float = 3.0, system: str | None = None) -> None:
        parsed = parse_global_bindings(bindings, use_defaults=bindings is None)
        self._combos: dict[str, Command] = {combo: command for command, combo in parsed.items()}
        self._on_command = on_command
        self._ready_timeout_s = ready_timeout_s
        self._system = system or platform.system()
        self._listener: Any = None
        self._note: str | None = None
        self._failure: BaseException | None = None

    @property
    def combos(self) -> Mapping[str, Command]:
        """The active table: canonical combo -> Command."""
        return MappingProxyType(self._combos)

    @property
    def active(self) -> bool:
        """True while pynput is listening."""
        return self._listener is not None and bool(self._listener.running)

    @property
    def note(self) -> str | None:
        """Why global hotkeys are off, when they are."""
        return self._note

    def start(self) -> bool:
        """Start listening; False (with a logged one-line note) when global hotkeys cannot work here."""
        if self._listener is not None:
            return self.active
        if not self._combos:
            self._note = "no global hotkeys are bound"
            log.info("Global hotkeys off: %s.", self._note)
            return False
        reason = _global_hotkeys_unavailable(self._system)
        if reason is not None:
            return self._off(reason)
        try:
            from pynput import keyboard  # lazy: importing pynput without a display raises
        except Exception as exc:
            return self._off(f"pynput could not start ({type(exc).__name__}: {str(exc).strip()})")
        try:
            handlers = {combo: self._callback(command) for combo, command in self._combos.items()}
            listener = keyboard.GlobalHotKeys(handlers)
            listener.start()
        except Exception as exc:
            return self._off(f"pynput could not start ({type(exc).__name__}: {str(exc).strip()})")
        # pynput's wait() has no timeout and never returns if its thread died before becoming ready.
        waiter = threading.Thread(target=listener.wait, name="facemimic-hotkeys-wait", daemon=True)
        waiter.start()
        waiter.join(self._ready_timeout_s)
        if waiter.is_alive() or not listener.is_alive():
            try:
                listener.stop()
            except Exception:  # it never started properly; nothing more to release
                pass
            return self._off(f"pynput's listener did not become ready within {self._ready_timeout_s:.1f} s")
        self._listener = listener
        self._note = None
        log.info("Global hotkeys on: %s.", ", ".join(f"{combo} {cmd.value}" for combo, cmd in self._combos.items()))
        if self._system == "Darwin":
            log.info("If global hotkeys do not react, allow this terminal in System Settings > Privacy & Security "
                     "> Input Monitoring (and Accessibility), then restart FaceMimic.")
        elif os.environ.get("WAYLAND_DISPLAY"):
            log.info("Wayland session: global hotkeys only see keys typed into X11 (XWayland) windows.")
        return True

    def stop(self, *, timeout_s: float = 2.0) -> None:
        """Stop listening. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            listener.stop()
            _wake_xorg_listener(listener)
            if listener is not threading.current_thread():
                listener.join(timeout_s)
        except Exception as exc:  # join() re-raises a callback error pynput caught; it was logged already
            log.debug("global hotkey listener ended with %s: %s", type(exc).__name__, exc)
        if listener.is_alive():
            log.debug("pynput's listener thread is still waiting for an X event; it is a daemon thread")

    def raise_if_failed(self) -> None:
        """Re-raise, in the caller's thread, the first exception on_command raised (the listener kept running)."""
        if self._failure is not None:
            raise HotkeyError(f"A global hotkey handler failed: {type(self._failure).__name__}: "
                              f"{self._failure}") from self._failure

    def __enter__(self) -> GlobalHotkeyListener:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _off(self, reason: str) -> bool:
        self._note = reason
        log.info("Global hotkeys off: %s.", reason)
        return False

    def _callback(self, command: Command) -> Callable[[], None]:
        def fire() -> None:
            try:
                self._on_command(command)
            except Exception as exc:  # an exception would stop pynput's listener; keep listening, report later
                log.exception("Global hotkey handler for %s failed", command.value)
                if self._failure is None:
                    self._failure = exc
        return fire
