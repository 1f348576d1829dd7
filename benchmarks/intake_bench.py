"""Intake throughput: a real `python -m vespucci_assets.intake` on 127.0.0.1 under 1, 4 and 16 clients.

Every client (a process by default) has its own keep-alive connection (http.client;
--client-lib requests for requests.Session, which costs ~3x the CPU per POST) and posts
pre-built Segment batch bodies (default 100 track/screen messages each, unique
messageIds) to /v1/batch for a fixed window; every response must be a 200.
Reported: sustained events/s, p50/p99 request latency, and the CPU the server,
the clients and the whole machine used in the window, so it is visible whether
the server or the load generator is the limit.

The ceiling is the same payloads without HTTP: parse, normalize and append
through the intake's own functions (intake_protocol.parse_json, read_submission,
normalize_all and CaptureWriter.append, which fsyncs), in as many processes as the
intake has workers, with 4 threads in all (the 4-client level) so that group commit applies.

Usage:
    .venv/bin/python benchmarks/intake_bench.py                # cores + 1 workers
    .venv/bin/python benchmarks/intake_bench.py --workers 1 --client-lib requests
    .venv/bin/python benchmarks/intake_bench.py --workers 1 --profile   # cProfile, figures then skewed

The last line is always
    intake_events_per_s=<4-client events/s> ceiling_ratio=<that / ceiling>
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import http.client
import io
import json
import multiprocessing
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from vespucci_assets import capture as capture_module  # noqa: E402
from vespucci_assets.capture import CaptureStore  # noqa: E402
from vespucci_assets.intake_protocol import normalize_all, parse_json, read_submission, route_for  # noqa: E402
from vespucci_assets.projects import Project, Registry  # noqa: E402

PROJECT_ID = "bench"
HOST = "127.0.0.1"
BATCH_PATH = "/v1/batch"
# A fixed-width placeholder inside every messageId of a body template; each request
# replaces it with its own sequence number, so every message ever sent is unique.
TOKEN = b"QQQQQQQQQQ"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_PATTERNS = ("pytest", "vespucci demo")
# CPU (in cores) that processes other than the intake and the benchmark may use in a window
# before its figures count as disturbed and the level is measured again.
OTHER_CPU_LIMIT = 0.15


# --- payloads ------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_template(label: str, batch_size: int, write_key: str | None) -> bytes:
    """One /v1/batch body as a mobile SDK sends it; messageIds carry TOKEN to be made unique per request."""
    now = datetime.now(timezone.utc)
    batch = []
    for i in range(batch_size):
        common = {
            "messageId": f"bench-{label}-{TOKEN.decode()}-{i:04d}",
            "anonymousId": f"dev-{label}-{i % 8}",
            "timestamp": iso(now - timedelta(milliseconds=50 * (batch_size - i))),
        }
        if i % 4 == 3:
            batch.append({"type": "screen", "name": f"Screen {i % 7}", "properties": {"path": f"/s/{i % 7}"}, **common})
        else:
            batch.append(
                {
                    "type": "track",
                    "event": ("Product Viewed", "Added To Cart", "Tapped")[i % 3],
                    "properties": {"sku": f"SKU-{i:05d}", "price": 9.99 + i, "currency": "EUR", "position": i},
                    **common,
                }
            )
    body = {
        "batch": batch,
        "sentAt": iso(now),
        "context": {
            "library": {"name": "analytics-swift", "version": "1.5.0"},
            "device": {"model": "iPhone15,2", "manufacturer": "Apple"},
            "os": {"name": "iOS", "version": "17.4"},
            "app": {"name": "Shop", "version": "3.2.1", "build": "321"},
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
        },
    }
    if write_key:
        body["writeKey"] = write_key
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    assert data.count(TOKEN) == batch_size
    return data


def make_body(template: bytes, sequence: int) -> bytes:
    return template.replace(TOKEN, b"%010d" % sequence)


# --- /proc readings ---------------------------------------------------------------------------


def _stat_fields(path: str) -> list[str] | None:
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def group_pids(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(f"/proc/{name}/stat")
            if fields and int(fields[2]) == pgid:
                pids.append(int(name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU of the process's main thread, CPU of all its other threads)."""
    main = other = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            if fields:
                seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
                if int(tid) == pid:
                    main += seconds
                else:
                    other += seconds
    return main, other


def system_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def vm_hwm_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return None


class CpuSampler:
    """CPU used by groups of processes between two samples."""

    def __init__(self, server_pgid: int, client_pids: list[int]):
        self.server_pgid = server_pgid
        self.client_pids = client_pids

    def sample(self) -> dict:
        server = {pid: thread_cpu_seconds(pid) for pid in group_pids(self.server_pgid)}
        own = 0.0 if os.getpid() in self.client_pids else cpu_seconds(os.getpid())
        return {
            "at": time.monotonic(),
            "server": server,
            "clients": sum(cpu_seconds(pid) for pid in self.client_pids),
            "bench": own,
            "system": system_busy_seconds(),
        }

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        wall = b["at"] - a["at"]
        main = sum(b["server"][p][0] - a["server"].get(p, (0, 0))[0] for p in b["server"])
        pool = sum(b["server"][p][1] - a["server"].get(p, (0, 0))[1] for p in b["server"])
        busy = b["system"][0] - a["system"][0]
        total = b["system"][1] - a["system"][1]
        clients = b["clients"] - a["clients"]
        ours = main + pool + clients + b["bench"] - a["bench"]
        return {
            "server_main": main / wall,
            "server_threads": pool / wall,
            "server": (main + pool) / wall,
            "clients": clients / wall,
            "other": max(0.0, busy - ours) / wall,  # everything else on the machine, kernel included
            "machine": busy / wall,
            "machine_idle_pct": 100 * (1 - busy / total) if total else 0.0,
        }


# --- the intake process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Intake:
    """`python -m vespucci_assets.intake` in its own process group; stop() reaches every worker."""

    def __init__(self, home: Path, workers: int, profile_path: Path | None = None):
        self.home = home
        self.workers = workers
        self.profile_path = profile_path
        self.port = free_port()
        self.log_path = home.parent / f"intake-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "Intake":
        env = {**os.environ, "VESPUCCI_HOME": str(self.home), "VESPUCCI_INTAKE_BODY_TIMEOUT_S": "5"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable]
        if self.profile_path is not None:  # profiles the main thread only: the event loop side
            command += ["-m", "cProfile", "-o", str(self.profile_path)]
        command += ["-m", "vespucci_assets.intake", "--host", HOST, "--port", str(self.port), "--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"intake exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    # With several workers, wait until every one of them has started its app.
                    if self.log_text().count("intake worker ready") >= self.workers:
                        return
            time.sleep(0.05)
        raise TimeoutError(f"intake not ready after {timeout_s} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def peak_rss_kb(self) -> dict[int, int]:
        return {pid: kb for pid in group_pids(self.process.pid) if (kb := vm_hwm_kb(pid)) is not None}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None and not group_pids(self.process.pid):
            return
        for signum, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not group_pids(self.process.pid):
                    return
                time.sleep(0.05)


# --- the load generator --------------------------------------------------------------------------


class RequestsPoster:
    """The client of record: one requests.Session, so one keep-alive connection."""

    errors = (requests.RequestException,)

    def __init__(self, url: str, headers: dict[str, str]):
        self.url, self.headers = url, headers
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy/netrc lookups per request: only 127.0.0.1 is ever contacted
        self.session.get(url + "/health", timeout=10)  # open the connection before the clock starts

    def post(self, body: bytes) -> tuple[int, str]:
        response = self.session.post(self.url + BATCH_PATH, data=body, headers=self.headers, timeout=30)
        return response.status_code, response.text

    def close(self) -> None:
        self.session.close()


class HttpClientPoster:
    """A leaner load generator (http.client, head and body in one send) to show how much requests costs."""

    errors = (OSError, http.client.HTTPException)

    def __init__(self, url: str, headers: dict[str, str]):
        self.headers = headers
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.conn = http.client.HTTPConnection(*self.address, timeout=30)
        self.conn.request("GET", "/health")
        self.conn.getresponse().read()

    def post(self, body: bytes) -> tuple[int, str]:
        try:
            self.conn.request("POST", BATCH_PATH, body=body, headers=self.headers)
            response = self.conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        except self.errors:
            self.conn.close()  # reconnects on the next request
            raise

    def close(self) -> None:
        self.conn.close()


POSTERS = {"requests": RequestsPoster, "http.client": HttpClientPoster}


def run_client(lib: str, url: str, api_key: str, template: bytes, go_at: float, window: tuple[float, float], max_requests: int):
    """One client on its own keep-alive connection, requests back to back until the window ends."""
    credentials = base64.b64encode(f"{api_key}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}
    poster = POSTERS[lib](url, headers)
    measured: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    sent = ok = 0
    start, end = window
    while time.monotonic() < go_at:
        time.sleep(0.001)
    while sent < max_requests:
        body = make_body(template, sent)
        began = time.monotonic()
        if began >= end:
            break
        sent += 1
        try:
            status, text = poster.post(body)
        except poster.errors as exc:
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        done = time.monotonic()
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            if len(errors) < 5:
                errors.append(f"HTTP {status}: {text[:200]}")
            continue
        ok += 1
        if began >= start and done <= end:
            measured.append(done - began)
    poster.close()
    return {"latencies": measured, "statuses": statuses, "errors": errors, "sent": sent, "ok": ok}


def _client_process(queue, *args) -> None:
    try:
        queue.put(run_client(*args))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        queue.put({"latencies": [], "statuses": {}, "errors": [f"client crashed: {exc!r}"], "sent": 0, "ok": 0})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_level(intake: Intake, api_key: str, clients: int, args, mode: str) -> dict:
    """`clients` concurrent clients for warmup + args.seconds; only the window after warmup is counted."""
    templates = [body_template(f"w{intake.workers}{mode[0]}{clients:02d}c{i:02d}", args.batch_size, None) for i in range(clients)]
    lead = 0.5 + 0.05 * clients  # time for every client to start and open its connection
    go_at = time.monotonic() + lead
    window = (go_at + args.warmup, go_at + args.warmup + args.seconds)
    common = (args.client_lib, intake.url, api_key)
    results: list[dict] = []
    if mode == "process":
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        workers = [
            context.Process(target=_client_process, args=(queue, *common, templates[i], go_at, window, args.max_requests))
            for i in range(clients)
        ]
        for worker in workers:
            worker.start()
        client_pids = [worker.pid for worker in workers]
    else:
        lock = threading.Lock()

        def target(template):
            result = run_client(*common, template, go_at, window, args.max_requests)
            with lock:
                results.append(result)

        workers = [threading.Thread(target=target, args=(templates[i],), daemon=True) for i in range(clients)]
        for worker in workers:
            worker.start()
        client_pids = [os.getpid()]
    sampler = CpuSampler(intake.process.pid, client_pids)
    time.sleep(max(0.0, window[0] - time.monotonic()))
    before = sampler.sample()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    after = sampler.sample()
    if mode == "process":
        for _ in workers:
            results.append(queue.get(timeout=120))
        for worker in workers:
            worker.join(timeout=30)
    else:
        for worker in workers:
            worker.join(timeout=120)
    latencies = [lat for r in results for lat in r["latencies"]]
    statuses: dict[int, int] = {}
    for r in results:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    errors = [e for r in results for e in r["errors"]]
    return {
        "clients": clients,
        "requests": len(latencies),
        "events_per_s": len(latencies) * args.batch_size / args.seconds,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "statuses": statuses,
        "errors": errors,
        "sent": sum(r["sent"] for r in results),
        "ok": sum(r["ok"] for r in results),
        "capped": any(r["sent"] >= args.max_requests for r in results),
        "cpu": CpuSampler.delta(before, after),
        "body_bytes": len(make_body(templates[0], 0)),
    }


# --- the ceiling: the intake's own code path without HTTP ------------------------------------------


def ingest_without_http(route, body: bytes, writer) -> int:
    """IntakeApp._ingest minus authentication: decode, read, normalize, durable append."""
    payload = parse_json(body)
    submission = read_submission(route, payload)
    items = normalize_all(submission, datetime.now(timezone.utc), route.call_type)
    return writer.append(PROJECT_ID, items).accepted


def run_ceiling(capture_dir: Path, threads: int, args) -> dict:
    route = route_for(BATCH_PATH)
    writer = CaptureStore(capture_dir).writer()
    templates = [body_template(f"ceil{threads:02d}c{i:02d}", args.batch_size, None) for i in range(threads)]
    counts = [0] * threads
    accepted = [0] * threads
    barrier = threading.Barrier(threads + 1)
    window: list[float] = []

    def worker(index: int) -> None:
        barrier.wait()
        start, end = window
        sequence = 0
        while sequence < args.max_requests:
            body = make_body(templates[index], sequence)
            sequence += 1
            began = time.monotonic()
            if began >= end:
                break
            accepted[index] += ingest_without_http(route, body, writer)
            if began >= start and time.monotonic() <= end:
                counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    now = time.monotonic()
    window.extend([now + args.warmup, now + args.warmup + args.seconds])
    barrier.wait()
    cpu_start, busy_start = time.process_time(), system_busy_seconds()[0]
    for thread in pool:
        thread.join(timeout=args.warmup + args.seconds + 120)
    wall = time.monotonic() - now
    cpu = time.process_time() - cpu_start
    other = max(0.0, system_busy_seconds()[0] - busy_start - cpu)
    writer.close()
    return {
        "threads": threads,
        "events_per_s": sum(counts) * args.batch_size / args.seconds,
        "accepted": sum(accepted),
        "cpu": cpu / wall,
        "other": other / wall,
    }


def _ceiling_process(queue, capture_dir: Path, threads: int, args) -> None:
    queue.put(run_ceiling(capture_dir, threads, args))


def run_ceiling_processes(capture_dir: Path, processes: int, threads: int, args) -> dict:
    """The ceiling with as many processes as the intake has workers (each with its own writer), summed."""
    if processes == 1:
        return run_ceiling(capture_dir, threads, args)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    per_process = max(1, threads // processes)
    workers = [context.Process(target=_ceiling_process, args=(queue, capture_dir / f"p{i}", per_process, args))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=args.warmup + args.seconds + 180) for _ in workers]
    for worker in workers:
        worker.join()
    return {
        "threads": per_process * processes,
        "events_per_s": sum(r["events_per_s"] for r in results),
        "accepted": sum(r["accepted"] for r in results),
        "cpu": sum(r["cpu"] for r in results),
        # Each process counts its siblings as "other"; take them out.
        "other": max(0.0, min(r["other"] - (sum(x["cpu"] for x in results) - r["cpu"]) for r in results)),
    }


def stage_breakdown(capture_dir: Path, args, bodies: int = 200) -> dict[str, float]:
    """Single-threaded microseconds per event for each step of the ingest path."""
    route = route_for(BATCH_PATH)
    writer = CaptureStore(capture_dir).writer()
    template = body_template("stages", args.batch_size, None)
    prepared = [make_body(template, i) for i in range(bodies)]
    totals = dict.fromkeys(("parse_json", "read_submission", "normalize_all", "encode records", "append (encode+write+fsync)"), 0.0)
    for body in prepared:
        t0 = time.perf_counter()
        payload = parse_json(body)
        t1 = time.perf_counter()
        submission = read_submission(route, payload)
        t2 = time.perf_counter()
        items = normalize_all(submission, datetime.now(timezone.utc), None)
        t3 = time.perf_counter()
        for item in items:  # the same encoding CaptureWriter.append does (its module's json), without the write
            capture_module.json.dumps(item.to_record(0), separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        t4 = time.perf_counter()
        writer.append(PROJECT_ID, items)
        t5 = time.perf_counter()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[name] += seconds
    writer.close()
    events = bodies * args.batch_size
    return {name: 1e6 * seconds / events for name, seconds in totals.items()}


def profile_ingest(capture_dir: Path, args, bodies: int = 150, top: int = 18) -> str:
    route = route_for(BATCH_PATH)
    writer = CaptureStore(capture_dir).writer()
    template = body_template("profile", args.batch_size, None)
    prepared = [make_body(template, i) for i in range(bodies)]
    profiler = cProfile.Profile()
    profiler.enable()
    for body in prepared:
        ingest_without_http(route, body, writer)
    profiler.disable()
    writer.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def profile_report(path: Path, top: int = 22) -> str:
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- orchestration ------------------------------------------------------------------------------------


def busy_pids() -> list[str]:
    """Other heavy jobs (test runs, demos) that would share this machine's cores with the benchmark."""
    busy = []
    for pattern in BUSY_PATTERNS:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        busy += [pid for pid in found if int(pid) != os.getpid()]
    return busy


def wait_until_idle(deadline: float, poll_s: float = 20) -> None:
    """Poll every poll_s seconds until no pytest / vespucci demo runs, or until the deadline."""
    started = time.monotonic()
    while True:
        busy = busy_pids()
        if not busy:
            if time.monotonic() - started >= 1:
                print(f"# machine free again after {time.monotonic() - started:.0f} s", flush=True)
            return
        if time.monotonic() >= deadline:
            print(f"# still busy (pids {', '.join(busy)}) and out of waiting time; measuring anyway", flush=True)
            return
        print(f"# waiting for other heavy processes to finish (pids {', '.join(busy)})", flush=True)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def measured_undisturbed(label: str, run, deadline: float, attempts: int = 3) -> dict:
    """run() once no test run or demo is running; measured again (up to `attempts` times in all)
    if other processes took more than OTHER_CPU_LIMIT cores meanwhile."""
    for attempt in range(1, attempts + 1):
        wait_until_idle(deadline)
        before = busy_pids()
        result = run()
        other = result["cpu"]["other"] if isinstance(result["cpu"], dict) else result["other"]
        result["busy_pids"] = sorted(set(before + busy_pids()))
        result["disturbed"] = other > OTHER_CPU_LIMIT
        if not result["disturbed"] or attempt == attempts:
            return result
        print(f"# {label}: other processes used {other:.2f} cores (pids running: {', '.join(result['busy_pids']) or 'none'}); "
              "measuring it again", flush=True)
        time.sleep(5)
    raise AssertionError("unreachable")


def stored_event_lines(capture_dir: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in capture_dir.rglob("*.ndjson") if "/events/" in path.as_posix())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window (default 1)")
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1,
                        help="intake worker processes (default: cores + 1, as recommended in the README: a worker "
                             "waiting on fsync or its GIL leaves a core to the spare one)")
    parser.add_argument("--batch-size", type=int, default=100, help="messages per request (default 100)")
    parser.add_argument("--clients", default="1,4,16", help="client counts, comma-separated (default 1,4,16)")
    parser.add_argument("--client-mode", choices=("process", "thread"), default="process",
                        help="clients as processes (default; no load-generator GIL) or threads in this process")
    parser.add_argument("--client-lib", choices=tuple(POSTERS), default="http.client",
                        help="HTTP client of the load generator (default http.client: the clients share this machine's "
                             "cores with the server, and requests.Session costs ~3x the CPU per POST)")
    parser.add_argument("--max-requests", type=int, default=20000, help="hard cap of requests per client and level")
    parser.add_argument("--ceiling-threads", type=int, default=4, help="threads for the in-process ceiling (default 4)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the ingest path in-process and the intake's event-loop thread (workers=1 only)")
    parser.add_argument("--wait-idle", type=float, default=600, help="wait up to this many s for pytest/vespucci demo to finish")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.profile and args.workers != 1:
        parser.error("--profile profiles the intake's main thread, which needs --workers 1")
    deadline = time.monotonic() + args.wait_idle
    wait_until_idle(deadline)
    print(f"# starting (intake --workers {args.workers}); pytest / vespucci demo running now: {', '.join(busy_pids()) or 'none'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="vespucci-intake-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        _, api_key = Registry(home / "projects.json").add(Project(project_id=PROJECT_ID, name="Bench", tracking_method="action"))
        profile_path = Path(tmp) / "intake.prof" if args.profile else None
        intake = Intake(home, args.workers, profile_path)
        rows, peak, server_profile, acked_requests = [], {}, None, []
        try:
            intake.start()
            # acked_requests: every attempt's 200s, re-measured ones included, since all of them were stored

            def level(clients: int) -> dict:
                row = run_level(intake, api_key, clients, args, args.client_mode)
                acked_requests.append(row["ok"])
                return row

            for clients in levels:
                rows.append(measured_undisturbed(f"the {clients}-client level", lambda: level(clients), deadline))
            peak = intake.peak_rss_kb()
        finally:
            intake.stop()
        if profile_path is not None and profile_path.exists():
            server_profile = profile_report(profile_path)
        acked = sum(acked_requests) * args.batch_size
        stored = stored_event_lines(home / "capture")

        attempt = iter(range(1, 100))

        def ceiling_run() -> dict:
            folder = Path(tmp) / f"ceiling-{next(attempt)}"
            return {
                **run_ceiling_processes(folder / "capture", args.workers, args.ceiling_threads, args),
                "stages": stage_breakdown(folder / "stages", args),
            }

        ceiling = measured_undisturbed("the ceiling", ceiling_run, deadline)
        stages = ceiling["stages"]
        ingest_profile = profile_ingest(Path(tmp) / "profile" / "capture", args) if args.profile else None

    body_kb = rows[0]["body_bytes"] / 1024 if rows else 0
    print(f"\nintake benchmark: --workers {args.workers}, clients as {args.client_mode}{'es' if args.client_mode == 'process' else 's'} using {args.client_lib}, "
          f"{args.batch_size} messages/request ({body_kb:.1f} KB body), {args.seconds:g} s window after {args.warmup:g} s warmup, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    header = (f"{'clients':>7} {'requests':>8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'non-200':>7}  "
              f"{'server CPU (loop+pool)':>22} {'client CPU':>10} {'other CPU':>9} {'machine idle':>12}")
    print(header)
    print("-" * len(header))
    for row in rows:
        bad = row["sent"] - row["ok"]  # non-200 answers and failed requests, warmup included
        cpu = row["cpu"]
        server = f"{cpu['server']:.2f} ({cpu['server_main']:.2f}+{cpu['server_threads']:.2f})"
        print(f"{row['clients']:>7} {row['requests']:>8} {row['events_per_s']:>9,.0f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
              f"{bad:>7}  {server:>22} {cpu['clients']:>10.2f} {cpu['other']:>9.2f} {cpu['machine_idle_pct']:>11.0f}%"
              + ("  (request cap hit)" if row["capped"] else "")
              + ("  (DISTURBED by other processes)" if row["disturbed"] else ""))
        for error in row["errors"][:3]:
            print(f"        error: {error}")
    print(f"{'ceiling':>7} {'':>8} {ceiling['events_per_s']:>9,.0f} {'':>7} {'':>7} {'':>7}  "
          f"{ceiling['cpu']:>22.2f} {'':>10} {ceiling['other']:>9.2f}   ({args.workers} process(es), {ceiling['threads']} threads, no HTTP)"
          + ("  (DISTURBED by other processes)" if ceiling["disturbed"] else ""))
    print("(CPU columns: cores used during the window; server = event-loop thread + all other threads, summed over workers;"
          " other = the rest of the machine)")
    running = sorted({pid for row in [*rows, ceiling] for pid in row["busy_pids"]})
    if running:
        print(f"pytest / vespucci demo processes present during the run: {', '.join(running)} (their CPU is in 'other')")
    if peak:
        worker_peak = max(peak.values())
        print(f"peak RSS (VmHWM) of the intake: largest process {worker_peak / 1024:.0f} MB, "
              f"all {len(peak)} processes {sum(peak.values()) / 1024:.0f} MB")
    print(f"stored vs acknowledged events: {stored:,} stored, {acked:,} acknowledged with 200"
          + ("" if stored == acked else "  <-- MISMATCH"))
    print("single-thread cost per event, microseconds: "
          + ", ".join(f"{name} {us:.1f}" for name, us in stages.items()))
    if ingest_profile:
        print("\n--- cProfile of the ingest path (parse + normalize + append), in-process, by tottime ---")
        print(ingest_profile)
    if server_profile:
        print("--- cProfile of the intake's main thread (event loop, uvicorn, httptools), by tottime ---")
        print(server_profile)
    four = next((row for row in rows if row["clients"] == 4), rows[0] if rows else None)
    rate = four["events_per_s"] if four else 0.0
    ratio = rate / ceiling["events_per_s"] if ceiling["events_per_s"] else 0.0
    print(f"intake_events_per_s={int(rate)} ceiling_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
