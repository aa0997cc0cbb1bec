"""When people answer: the human agents' service hours, per weekday, in one time zone.

A customer handed to a person outside these hours must hear when someone will
answer, not silence; so the schedule answers three questions for a moment in
time: is a person on duty, since when (a wait only counts while someone could
have answered), and when the next shift starts, said the way a customer reads
it ("明天（周一）09:00"). Kept free of the rest of ``bot`` so the config can
check a schedule when it loads.

A day is written ``"09:00-21:00"``, several shifts as ``"09:00-12:00,13:30-21:00"``,
``"00:00-24:00"`` for the whole day, and ``""`` or ``"closed"`` for a closed day.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_ZH_DAYS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
_EN_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SHIFT = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_CLOSED = ("", "closed", "休息")
_WHOLE_DAY = ((0, 1440),)

Shift = tuple[int, int]  # minutes after midnight, [start, end)


def parse_day(spec: str) -> tuple[Shift, ...]:
    """The shifts of one day; ValueError naming what is wrong (the value is config, not a secret)."""
    if spec.strip().lower() in _CLOSED:
        return ()
    shifts: list[Shift] = []
    for part in spec.split(","):
        m = _SHIFT.match(part)
        if m is None:
            raise ValueError(f"expected HH:MM-HH:MM (several joined by commas) or 'closed', got {spec!r}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440 or end <= start:
            raise ValueError(f"{part.strip()!r}: times run from 00:00 to 24:00 and a shift must end after it starts")
        if shifts and start < shifts[-1][1]:
            raise ValueError(f"{spec!r}: shifts must be in order and must not overlap")
        shifts.append((start, end))
    return tuple(shifts)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from None


@dataclass(frozen=True, slots=True)
class ServiceHours:
    tz: ZoneInfo
    week: tuple[tuple[Shift, ...], ...]  # seven days, Monday first

    @classmethod
    def parse(cls, days: Mapping[str, str], timezone: str) -> ServiceHours:
        """From ``{mon: "09:00-21:00", ...}``; a day left out is closed, a week without any shift is refused."""
        unknown = set(days) - set(DAYS)
        if unknown:
            raise ValueError(f"unknown weekday(s) {sorted(unknown)}; use {', '.join(DAYS)}")
        week = tuple(parse_day(days.get(d, "")) for d in DAYS)
        if not any(week):
            raise ValueError("every day is closed: nobody would ever answer a handoff")
        return cls(zone(timezone), week)

    # ------------------------------------------------------------------ moments
    def _local(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.tz)

    def _at(self, day: date, minute: int) -> datetime:
        base = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return base + timedelta(minutes=minute) if minute < 1440 else base + timedelta(days=1)

    def _shift_at(self, ts: float) -> tuple[date, Shift] | None:
        local = self._local(ts)
        minute = local.hour * 60 + local.minute + local.second / 60
        for shift in self.week[local.weekday()]:
            if shift[0] <= minute < shift[1]:
                return local.date(), shift
        return None

    def is_open(self, ts: float) -> bool:
        return self._shift_at(ts) is not None

    def opened_at(self, ts: float) -> float | None:
        """When the shift on duty at ``ts`` began (a shift running on from 24:00 the day before counts as
        one); None when nobody is on duty."""
        found = self._shift_at(ts)
        if found is None:
            return None
        day, (start, _end) = found
        for _ in range(7):
            if start != 0:
                break
            before = day - timedelta(days=1)
            last = self.week[before.weekday()]
            if not last or last[-1][1] != 1440:
                break
            day, start = before, last[-1][0]
        return self._at(day, start).timestamp()

    def next_opening(self, ts: float) -> float:
        """The first shift start after ``ts`` (``parse`` guarantees there is one within a week)."""
        today = self._local(ts).date()
        for offset in range(8):
            day = today + timedelta(days=offset)
            for start, _end in self.week[day.weekday()]:
                at = self._at(day, start).timestamp()
                if at > ts:
                    return at
        raise AssertionError("a parsed schedule opens at least once a week")

    # ------------------------------------------------------------------ words
    def describe(self, lang: str) -> str:
        """The week in a line: ``每天 09:00-21:00`` / ``周一至周五 09:00-21:00，周六、周日休息``."""
        zh = lang != "en"
        if len(set(self.week)) == 1:
            return ("每天 " if zh else "daily ") + _shifts(self.week[0], zh)
        groups: list[tuple[int, int]] = []  # runs of consecutive days with the same shifts
        for i, shifts in enumerate(self.week):
            if groups and self.week[groups[-1][0]] == shifts:
                groups[-1] = (groups[-1][0], i)
            else:
                groups.append((i, i))
        parts = []
        for first, last in groups:
            names = _ZH_DAYS if zh else _EN_DAYS
            if first == last:
                span = names[first]
            elif last == first + 1:
                span = f"{names[first]}{'、' if zh else ', '}{names[last]}"
            else:
                span = f"{names[first]}{'至' if zh else '-'}{names[last]}"
            shifts = self.week[first]
            if not shifts:
                parts.append(f"{span}休息" if zh else f"closed {span}")
            else:
                parts.append(f"{span} {_shifts(shifts, zh)}")
        return ("，" if zh else "; ").join(parts)

    def when(self, ts: float, now: float, lang: str) -> str:
        """A moment as a customer reads it, relative to now: 今天 / 明天（周一） / 5月15日（周三）."""
        at, today = self._local(ts), self._local(now).date()
        clock = f"{at.hour:02d}:{at.minute:02d}"
        days = (at.date() - today).days
        wd = at.weekday()
        if lang != "en":
            if days == 0:
                return f"今天 {clock}"
            if days == 1:
                return f"明天（{_ZH_DAYS[wd]}）{clock}"
            return f"{at.month}月{at.day}日（{_ZH_DAYS[wd]}）{clock}"
        offset = at.utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds() // 60)
        utc = f"UTC{'+' if minutes >= 0 else '-'}{abs(minutes) // 60}" + (f":{abs(minutes) % 60:02d}"
                                                                         if minutes % 60 else "")
        if days == 0:
            return f"today at {clock} ({utc})"
        if days == 1:
            return f"tomorrow ({_EN_DAYS[wd]}) at {clock} ({utc})"
        return f"{_EN_DAYS[wd]}, {_EN_MONTHS[at.month - 1]} {at.day} at {clock} ({utc})"


def _shifts(shifts: tuple[Shift, ...], zh: bool) -> str:
    if shifts == _WHOLE_DAY:
        return "全天" if zh else "24 hours"
    return ("、" if zh else ", ").join(f"{_hhmm(s)}-{_hhmm(e)}" for s, e in shifts)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
