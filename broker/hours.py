"""A role's working hours (`roles.<name>.hours`), for the `off_hours` alert.

Each entry is `DAYS HH:MM-HH:MM ZONE`: days as names (`Mon`), ranges (`Mon-Fri`, `Fri-Mon`
wraps) or lists of both (`Mon-Thu,Sat`), or `daily`; a start before an end on the same day
(`24:00` ends at midnight); an IANA time zone (`Europe/Berlin`, `UTC`). Times are wall-clock
times in that zone, daylight saving included. A role may list several entries; a grant inside
any of them is within hours. A night shift is two entries (`Mon-Fri 22:00-24:00 ...` and
`Tue-Sat 00:00-06:00 ...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(r"\s*(\S+)\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})\s+(\S+)\s*")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: int  # minutes after local midnight
    end: int
    zone: ZoneInfo
    text: str

    def contains(self, when: datetime) -> bool:
        local = when.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end


@dataclass(frozen=True)
class Hours:
    windows: tuple[Window, ...]

    def contains(self, when: datetime) -> bool:
        """Whether the aware datetime `when` falls inside any of the windows."""
        return any(w.contains(when) for w in self.windows)

    def describe(self) -> str:
        return "; ".join(w.text for w in self.windows)

    def local_time(self, when: datetime) -> str:
        """`when` in the first window's zone, as the alert shows it."""
        return when.astimezone(self.windows[0].zone).strftime("%a %Y-%m-%d %H:%M %Z")


def parse_hours(entries: tuple[str, ...]) -> Hours:
    """Parse a role's `hours` entries; raises ValueError with the reason."""
    return Hours(tuple(_window(text) for text in entries))


def _window(text: str) -> Window:
    match = _ENTRY.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not DAYS HH:MM-HH:MM ZONE (e.g. 'Mon-Fri 07:00-19:00 Europe/Berlin')")
    days_text, h1, m1, h2, m2, zone_name = match.groups()
    start, end = _minutes(h1, m1, text), _minutes(h2, m2, text)
    if start >= end:
        raise ValueError(f"{text!r}: the start must be before the end (split a night shift into two entries)")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{text!r}: unknown time zone {zone_name!r} (an IANA name such as Europe/Berlin)"
        ) from None
    return Window(_days(days_text, text), start, end, zone, text.strip())


def _minutes(hours: str, minutes: str, text: str) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        raise ValueError(f"{text!r}: {hours}:{minutes} is not a time of day (00:00 to 24:00)")
    return h * 60 + m


def _days(spec: str, text: str) -> frozenset[int]:
    if spec.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise ValueError(f"{text!r}: {part!r} is not a day or day range (Mon-Fri, Sat, daily)")
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)
