"""Which (project, day) partitions need a run: new capture data and the daily schedule.

Plain Python over the capture store; the Dagster sensor and schedule only wrap it.
Sessions of day D read the events of D-1..D+1 (SPEC section 7), so new data for day D
makes D-1, D and D+1 stale.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

DayRange = tuple[date, date]


def changed_days(before: dict[str, int], after: dict[str, int]) -> dict[str, set[date]]:
    """{project: days} whose capture folders grew between two `CaptureStore.day_sizes()` scans."""
    changed: dict[str, set[date]] = defaultdict(set)
    for folder, size in after.items():
        if size != before.get(folder, 0):
            project_id, _kind, day = folder.split("/")
            changed[project_id].add(date.fromisoformat(day))
    return dict(changed)


def stale_ranges(days: Iterable[date], first: date, last: date) -> list[DayRange]:
    """Each changed day with its neighbours, merged into contiguous ranges within [first, last]."""
    neighbourhood = {d + timedelta(days=k) for d in days for k in (-1, 0, 1)}
    stale = sorted(d for d in neighbourhood if first <= d <= last)
    ranges: list[DayRange] = []
    for day in stale:
        if ranges and day == ranges[-1][1] + timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def daily_range(today: date) -> DayRange:
    """The scheduled run: yesterday, the day before (its sessions crossing midnight close now),
    and today, whose events yesterday's sessions read."""
    return today - timedelta(days=2), today


# The daily run starts at 00:30 UTC; give it until 03:00 before yesterday counts as late.
COMPLETENESS_GRACE = timedelta(hours=3)


def day_due_complete(now: datetime) -> date:
    """The newest day whose partitions must all exist by `now`: yesterday, once the grace has passed."""
    return (now.astimezone(timezone.utc) - COMPLETENESS_GRACE).date() - timedelta(days=1)
