"""The commands a user can give while FaceMimic runs (hotkeys, preview keys)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Command(str, enum.Enum):
    """A user command; the value is the name used in config.yaml."""

    AVATAR_1 = "avatar_1"
    AVATAR_2 = "avatar_2"
    AVATAR_3 = "avatar_3"
    AVATAR_4 = "avatar_4"
    AVATAR_5 = "avatar_5"
    AVATAR_6 = "avatar_6"
    AVATAR_7 = "avatar_7"
    AVATAR_8 = "avatar_8"
    AVATAR_9 = "avatar_9"
    PREVIOUS_AVATAR = "previous_avatar"
    NEXT_AVATAR = "next_avatar"
    BEST_MATCH_AVATAR = "best_match_avatar"
    RECALIBRATE = "recalibrate"
    PASSTHROUGH = "passthrough"
    FREEZE = "freeze"
    OVERLAY = "overlay"
    STATS = "stats"
    RELOAD_AVATARS = "reload_avatars"
    INTENSITY_UP = "intensity_up"
    INTENSITY_DOWN = "intensity_down"
    SNAPSHOT = "snapshot"
    BADGE = "badge"
    HELP = "help"
    QUIT = "quit"

    @property
    def avatar_slot(self) -> int | None:
        """0-based avatar slot for AVATAR_n commands, else None."""
        if self.value.startswith("avatar_"):
            return int(self.value.split("_")[1]) - 1
        return None


@dataclass(frozen=True)
class SelectAvatar:
    """Show the avatar at 0-based `index` in the avatar list (any index: best match is not limited to nine)."""

    index: int


def as_render_request(command: Command) -> Command | SelectAvatar:
    """AVATAR_n becomes SelectAvatar(n - 1); every other command is passed on as it is."""
    slot = command.avatar_slot
    return command if slot is None else SelectAvatar(slot)
