"""Service hours: who is on duty at a moment, since when, when the next shift
starts, and how that is said to a customer in Chinese and English."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bot.service_hours import ServiceHours, parse_day

SH = ZoneInfo("Asia/Shanghai")
WEEK = {"mon": "09:00-21:00", "tue": "09:00-21:00", "wed": "09:00-21:00", "thu": "09:00-21:00",
        "fri": "09:00-21:00", "sat": "10:00-18:00", "sun": "closed"}


def at(day: int, hour: int, minute: int = 0) -> float:
    """A moment in May 2024, Shanghai time (13 May 2024 is a Monday)."""
    return datetime(2024, 5, day, hour, minute, tzinfo=SH).timestamp()


def test_open_closed_and_the_next_opening() -> None:
    hours = ServiceHours.parse(WEEK, "Asia/Shanghai")
    assert hours.is_open(at(13, 9)) and hours.is_open(at(13, 20, 59)) and not hours.is_open(at(13, 21))
    assert hours.opened_at(at(13, 15)) == at(13, 9) and hours.opened_at(at(13, 22)) is None
    assert hours.next_opening(at(13, 8)) == at(13, 9)
    assert hours.next_opening(at(13, 22)) == at(14, 9)
    assert hours.next_opening(at(18, 19)) == at(20, 9)  # Saturday evening: Sunday is closed


def test_the_week_and_a_moment_in_words() -> None:
    hours = ServiceHours.parse(WEEK, "Asia/Shanghai")
    assert hours.describe("zh") == "周一至周五 09:00-21:00，周六 10:00-18:00，周日休息"
    assert hours.describe("en") == "Mon-Fri 09:00-21:00; Sat 10:00-18:00; closed Sun"
    assert hours.when(at(13, 9), at(13, 7), "zh") == "今天 09:00"
    assert hours.when(at(14, 9), at(13, 22), "zh") == "明天（周二）09:00"
    assert hours.when(at(20, 9), at(18, 19), "zh") == "5月20日（周一）09:00"
    assert hours.when(at(14, 9), at(13, 22), "en") == "tomorrow (Tue) at 09:00 (UTC+8)"
    every = ServiceHours.parse(dict.fromkeys(WEEK, "00:00-24:00"), "Asia/Shanghai")
    assert every.describe("zh") == "每天 全天" and every.is_open(at(19, 3))


def test_shifts_running_through_midnight_count_as_one() -> None:
    hours = ServiceHours.parse({"mon": "20:00-24:00", "tue": "00:00-02:00,09:00-12:00"}, "Asia/Shanghai")
    assert hours.opened_at(at(14, 1)) == at(13, 20)  # on duty since Monday 20:00
    assert hours.next_opening(at(14, 3)) == at(14, 9)


@pytest.mark.parametrize("spec", ["9-21", "21:00-09:00", "09:00-25:00", "09:00-12:00,11:00-13:00", "9:60-10:00"])
def test_malformed_days_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_day(spec)


def test_a_week_without_any_shift_or_an_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="every day is closed"):
        ServiceHours.parse(dict.fromkeys(WEEK, "closed"), "Asia/Shanghai")
    with pytest.raises(ValueError, match="unknown time zone"):
        ServiceHours.parse(WEEK, "Asia/Nowhere")
    with pytest.raises(ValueError, match="unknown weekday"):
        ServiceHours.parse({"monday": "09:00-18:00"}, "Asia/Shanghai")
