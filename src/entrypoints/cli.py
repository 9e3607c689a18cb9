"""`guestagent`: run once, plan, run as a daemon, run metadata scripts."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from guestagent.entrypoints.lean import skip_chardet

skip_chardet()  # before the imports below bring in requests (memory: see lean.py)

from guestagent.adapters.platforms.registry import PROVIDERS  # noqa: E402
from guestagent.entrypoints import collect_logs, deprovision_cmd, scripts_cmd  # noqa: E402
from guestagent.entrypoints.oneshot import agent_or_report, options_from, snapshot_or_report  # noqa: E402
from guestagent.services.subsystem import Outcome  # noqa: E402

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_METADATA = 2
EXIT_USAGE = 64
# What --version says when the package metadata is not there (running from a source tree).
VERSION_FALLBACK = "0.1.0"


def agent_version() -> str:
    """The installed distribution's version (importlib.metadata), else VERSION_FALLBACK."""
    from importlib import metadata

    try:
        return metadata.version("guestagent")
    except metadata.PackageNotFoundError:
        return VERSION_FALLBACK


class _VersionAction(argparse.Action):
    """argparse's own version action, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"guestagent {agent_version()}")
        parser.exit()


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--metadata-url",
        help="the metadata service's base URL (default: the platform's own address)",
    )
    common.add_argument(
        "--platform",
        choices=["auto", *(spec.name for spec in PROVIDERS)],
        help="the platform to read (default: [Core] platform in the config, else auto-detect)",
    )
    common.add_argument(
        "--config",
        help="config file (default: /etc/default/instance_configs.cfg under --root); "
        ".distro and .template beside it are layered in",
    )
    common.add_argument("--root", default="/", help="act on the system under this directory (default: /)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--netns", help="network namespace for route and NIC changes (testing)")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(prog="guestagent", description=__doc__)
    top.add_argument("--version", action=_VersionAction, help="print the agent's version and exit")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="reconcile once and exit")
    run.add_argument("--once", action="store_true", help="one pass (the only mode; kept for clarity)")
    run.add_argument("--dry-run", action="store_true", help="print the actions, change nothing")
    run.add_argument("--wait", type=float, default=30.0, help="seconds to wait for metadata (default 30)")
    plan = sub.add_parser("plan", parents=[common], help="print what a run would do; change nothing")
    plan.add_argument("--wait", type=float, default=30.0, help="seconds to wait for metadata (default 30)")
    daemon = sub.add_parser("daemon", parents=[common], help="first reconcile, then follow metadata changes")
    daemon.add_argument(
        "--backoff-max", type=float, default=30.0, help="longest delay between metadata retries (seconds)"
    )
    sub.add_parser("detect", parents=[common], help="print the platform auto-detection chooses, and why")
    scripts_cmd.add_parser(sub, common)
    deprovision_cmd.add_parser(sub, common)
    collect_logs.add_parser(sub, common)
    config = sub.add_parser("config", parents=[common], help="print the effective configuration")
    config.add_argument("--reference", action="store_true", help="print every option as a Markdown table")
    sandbox = sub.add_parser("sandbox", help="copy this machine's account files into DIR for --root DIR")
    sandbox.add_argument("dir")
    return top


def _print(outcomes: Sequence[Outcome], dry_run: bool) -> None:
    verb = "would" if dry_run else "did"
    for outcome in outcomes:
        for reason in outcome.held:
            print(f"{outcome.subsystem}: HELD {reason}")
        if not outcome.actions and not outcome.failures and not outcome.held:
            print(f"{outcome.subsystem}: nothing to do")
        for action in outcome.actions:
            print(f"{outcome.subsystem}: {verb} {action}")
        for failure in outcome.failures:
            print(f"{outcome.subsystem}: FAILED {failure}")


def run_once(args: argparse.Namespace, dry_run: bool) -> int:
    agent = agent_or_report(args, dry_run)
    if agent is None:
        return EXIT_NO_METADATA
    snapshot = snapshot_or_report(args, agent)
    if snapshot is None:
        return EXIT_NO_METADATA
    outcomes = [o for o in agent.scheduler().run_due(agent.ctx, snapshot.metadata) if not o.skipped]
    _print(outcomes, dry_run)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def show_config(args: argparse.Namespace) -> int:
    from guestagent.adapters.local_filesystem import LocalFileSystem
    from guestagent.domain.config import render_reference, render_values
    from guestagent.entrypoints.bootstrap import read_config

    if args.reference:
        print(render_reference(), end="")
        return EXIT_OK
    print(render_values(read_config(options_from(args, True), LocalFileSystem(args.root))), end="")
    return EXIT_OK


def detect_platform(args: argparse.Namespace) -> int:
    from guestagent.adapters.local_filesystem import LocalFileSystem
    from guestagent.entrypoints.bootstrap import choose_platform, read_config

    options = options_from(args, True)
    try:
        spec, _, reason = choose_platform(options, read_config(options, LocalFileSystem(args.root)))
    except ValueError as exc:
        print(f"guestagent: {exc}", file=sys.stderr)
        return EXIT_NO_METADATA
    print(f"{spec.name}\t{reason}")
    return EXIT_OK


def daemon(args: argparse.Namespace) -> int:
    from guestagent.entrypoints.daemon import run_daemon

    return run_daemon(options_from(args, False))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "sandbox":
        from guestagent.entrypoints.sandbox import make_sandbox

        print(make_sandbox(args.dir))
        return EXIT_OK
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s guestagent %(levelname)s %(message)s",
    )
    if args.command == "run":
        return run_once(args, args.dry_run)
    if args.command == "plan":
        return run_once(args, True)
    if args.command == "daemon":
        return daemon(args)
    if args.command == "scripts":
        return scripts_cmd.run(args)
    if args.command == "config":
        return show_config(args)
    if args.command == "detect":
        return detect_platform(args)
    if args.command == "deprovision":
        return deprovision_cmd.run(args)
    if args.command == "collect-logs":
        return collect_logs.run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
