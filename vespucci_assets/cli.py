"""The `vespucci` command line (SPEC section 10). Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import date

from vespucci_assets.home import Home
from vespucci_assets.projects import ENGINES, SOURCES, TRACKING_METHODS, Project, ProjectError, Registry


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        raise CliError(f"{self.prog}: {message} (see --help)")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: use YYYY-MM-DD") from None


def _project_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    parser.add_argument("--name")
    parser.add_argument("--tracking-method", choices=TRACKING_METHODS, default="auto" if defaults else None)
    parser.add_argument("--session-timeout-minutes", type=int, default=30 if defaults else None)
    parser.add_argument("--max-session-hours", type=int, default=24 if defaults else None)
    parser.add_argument("--source", choices=SOURCES, default="webhook" if defaults else None)
    parser.add_argument("--warehouse-url")
    parser.add_argument("--warehouse-schema")
    parser.add_argument("--webhook-secret", help="shared secret of Segment's Webhooks destination")
    parser.add_argument("--engine", choices=ENGINES, default="duckdb" if defaults else None,
                        help="where the tables are computed: duckdb (embedded), warehouse (inside the Segment warehouse), spark")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vespucci", description="Session analytics for Segment event streams.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    projects = commands.add_parser("projects", help="manage projects (one per Segment source)")
    actions = projects.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = actions.add_parser("add", help="create a project and print its API key once")
    add.add_argument("project_id")
    _project_options(add, defaults=True)
    add.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="list projects")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="show one project's settings")
    show.add_argument("project_id")
    show.add_argument("--json", action="store_true")
    settings = actions.add_parser("set", help="change a project's settings")
    settings.add_argument("project_id")
    _project_options(settings, defaults=False)
    rotate = actions.add_parser("rotate-key", help="issue a new API key")
    rotate.add_argument("project_id")
    rotate.add_argument("--keep-old", action="store_true", help="keep accepting the previous key(s)")
    rotate.add_argument("--json", action="store_true")

    intake = commands.add_parser("intake", help="run the HTTP intake")
    intake.add_argument("--host", default="127.0.0.1")
    intake.add_argument("--port", type=int, default=8088)
    intake.add_argument("--workers", type=int, default=1)

    importer = commands.add_parser("import", help="import NDJSON / JSON / .gz files or S3-archive folders")
    importer.add_argument("files", nargs="+")
    importer.add_argument("--project", required=True)

    materialize = commands.add_parser("materialize", help="run the Dagster assets for partitions with data")
    materialize.add_argument("--project", action="append", dest="projects")
    materialize.add_argument("--from", dest="start", type=_day)
    materialize.add_argument("--to", dest="end", type=_day)

    demo = commands.add_parser("demo", help="the whole product end to end on generated sample data")
    demo.add_argument("--days", type=int, default=7)
    demo.add_argument("--devices", type=int, default=60)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        home = Home.from_env().ensure()
        return COMMANDS[args.command](args, home)
    except (CliError, ProjectError) as exc:
        print(f"vespucci: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, CliError) else 1
    except KeyboardInterrupt:
        print("vespucci: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        print(f"vespucci: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _quiet_dagster_warnings() -> None:
    # Beta/preview notices about Dagster APIs are for us, not for the people running the CLI.
    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def _projects(args, home: Home) -> int:
    registry = Registry(home.registry_path)
    if args.action == "add":
        project, api_key = registry.add(
            Project(
                project_id=args.project_id,
                name=args.name or args.project_id,
                tracking_method=args.tracking_method,
                session_timeout_minutes=args.session_timeout_minutes,
                max_session_hours=args.max_session_hours,
                source=args.source,
                warehouse_url=args.warehouse_url,
                warehouse_schema=args.warehouse_schema,
                webhook_secret=args.webhook_secret,
                engine=args.engine,
            )
        )
        if args.json:
            print(json.dumps({"project_id": project.project_id, "api_key": api_key}))
        else:
            print(f"created project {project.project_id} ({project.tracking_method}-based sessions)")
            print(f"API key (shown once, store it now): {api_key}")
    elif args.action == "list":
        projects = registry.list()
        if args.json:
            print(json.dumps([p.public_dict() for p in projects]))
        elif not projects:
            print("no projects yet: add one with `vespucci projects add ID`")
        else:
            print(f"{'PROJECT':<24} {'METHOD':<8} {'TIMEOUT':>8} {'SOURCE':<10} NAME")
            for p in projects:
                print(f"{p.project_id:<24} {p.tracking_method:<8} {p.session_timeout_minutes:>6}m {p.source:<10} {p.name}")
    elif args.action == "show":
        data = registry.get(args.project_id).public_dict()
        print(json.dumps(data) if args.json else "\n".join(f"{k}: {v}" for k, v in data.items()))
    elif args.action == "set":
        changes = {
            field: getattr(args, field)
            for field in ("name", "tracking_method", "session_timeout_minutes", "max_session_hours", "source",
                          "warehouse_url", "warehouse_schema", "webhook_secret", "engine")
            if getattr(args, field) is not None
        }
        if not changes:
            raise CliError("projects set: nothing to change (give at least one option)")
        project = registry.update(args.project_id, **changes)
        print(f"updated {project.project_id}: " + ", ".join(f"{k}={v}" for k, v in changes.items() if k != "webhook_secret"))
    elif args.action == "rotate-key":
        api_key = registry.rotate_key(args.project_id, keep_old=args.keep_old)
        print(json.dumps({"project_id": args.project_id, "api_key": api_key}) if args.json else f"new API key (shown once): {api_key}")
    return 0


def _intake(args, home: Home) -> int:
    from vespucci_assets.intake import serve

    serve(home, host=args.host, port=args.port, workers=args.workers)
    return 0


def _import(args, home: Home) -> int:
    from vespucci_assets.capture import CaptureStore
    from vespucci_assets.importer import import_files

    Registry(home.registry_path).get(args.project)
    writer = CaptureStore(home.capture_dir).writer()
    try:
        summary = import_files(writer, args.project, args.files)
    finally:
        writer.close()
    print(f"imported {summary.accepted} messages from {summary.files} file(s) into {args.project}; "
          f"{summary.quarantined} quarantined")
    return 0


def _materialize(args, home: Home) -> int:
    _quiet_dagster_warnings()
    from vespucci_assets.runs import materialize_partitions

    if args.start and args.end and args.start > args.end:
        raise CliError("--from must not be after --to")
    summary = materialize_partitions(home, args.projects, args.start, args.end, progress=print)
    print(f"done: {len(summary.runs)} run(s), {summary.partitions} day partition(s)")
    return 0


def _demo(args, home: Home) -> int:
    _quiet_dagster_warnings()
    from vespucci_assets.demo import run_demo

    run_demo(home, days=args.days, devices=args.devices, out=print)
    return 0


COMMANDS = {"projects": _projects, "intake": _intake, "import": _import, "materialize": _materialize, "demo": _demo}

if __name__ == "__main__":
    sys.exit(main())
