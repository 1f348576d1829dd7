"""Cost of one `new_capture_data` sensor tick over a large capture store.

Builds a capture store of PROJECTS x DAYS day folders with FILES_PER_DAY writer files
each, then times the tick's work (the day-folder scan and the change detection) with
nothing changed and with one late file, next to a baseline that opens and reads every
file (what a naive "look for new lines" sensor would do). Prints files, ms per tick and
the ratio; the last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from vespucci_assets.capture import EVENTS, CaptureStore
from vespucci_assets.scheduling import changed_days, stale_ranges

LINE = b'{"message_id":"m","type":"screen","timestamp":"2026-11-20T10:00:00.000000Z"}\n'


def build_store(root: Path, projects: int, days: int, files_per_day: int, lines_per_file: int) -> CaptureStore:
    first = date(2025, 1, 1)
    for p in range(projects):
        for d in range(days):
            folder = root / f"project-{p}" / EVENTS / (first + timedelta(days=d)).isoformat()
            folder.mkdir(parents=True)
            for f in range(files_per_day):
                (folder / f"writer-{f}.ndjson").write_bytes(LINE * lines_per_file)
    return CaptureStore(root)


def best_of(repeats: int, fn) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--files-per-day", type=int, default=2)
    parser.add_argument("--lines-per-file", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp), args.projects, args.days, args.files_per_day, args.lines_per_file)
        files = args.projects * args.days * args.files_per_day
        cursor = json.dumps(store.day_sizes())

        def tick() -> dict:
            changed = changed_days(json.loads(cursor), store.day_sizes())
            return {p: stale_ranges(days, date(2024, 1, 1), date(2026, 12, 31)) for p, days in changed.items()}

        quiet = best_of(args.repeats, tick)
        assert tick() == {}
        late = Path(tmp) / "project-3" / EVENTS / "2025-06-01" / "writer-0.ndjson"
        with open(late, "ab") as fh:
            fh.write(LINE)
        assert tick() == {"project-3": [(date(2025, 5, 31), date(2025, 6, 2))]}
        with_late = best_of(args.repeats, tick)

        naive = best_of(max(1, args.repeats // 2), lambda: sum(
            1 for p in range(args.projects) for _ in store.read_records(f"project-{p}", EVENTS, store.days(f"project-{p}"))))

        print(f"capture files           {files:>10,}")
        print(f"day folders             {args.projects * args.days:>10,}")
        print(f"tick, nothing new       {quiet * 1000:>10.1f} ms")
        print(f"tick, one late event    {with_late * 1000:>10.1f} ms")
        print(f"read every file (naive) {naive * 1000:>10.1f} ms")
        print(f"sensor_tick_ms={quiet * 1000:.1f} files={files} naive_ratio={naive / quiet:.1f}")


if __name__ == "__main__":
    main()
