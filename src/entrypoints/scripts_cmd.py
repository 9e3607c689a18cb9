"""`guestagent scripts startup|shutdown`: the metadata script runner's command line.

Wiring (cli.py): `scripts_cmd.add_parser(sub, common)` in parser(), and
`if args.command == "scripts": return scripts_cmd.run(args)` in main().
"""

from __future__ import annotations

import argparse
from typing import Any

from guestagent.domain.scripts import KINDS

EXIT_NO_METADATA = 2


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    scripts = subparsers.add_parser(
        "scripts", parents=[common], help="run the startup or shutdown scripts from metadata"
    )
    scripts.add_argument("kind", choices=KINDS)
    scripts.add_argument("--dry-run", action="store_true", help="log the scripts, run nothing")
    scripts.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for metadata (default 30)"
    )
    scripts.add_argument(
        "--run-on-this-machine",
        action="store_true",
        help="with --root: run the scripts anyway (they run on this machine, not in the root)",
    )


def run(args: argparse.Namespace) -> int:
    import attrs

    from guestagent.adapters.script_fetcher import HttpScriptFetcher
    from guestagent.adapters.script_runner import SubprocessScriptRunner
    from guestagent.entrypoints.oneshot import agent_or_report, snapshot_or_report
    from guestagent.services.scripts import run_scripts

    agent = agent_or_report(args, args.dry_run)
    if agent is None:
        return EXIT_NO_METADATA
    ctx = agent.ctx
    # A script is arbitrary code run as root; --root confines files, not programs, so in a
    # sandbox the scripts are only listed unless the caller says otherwise.
    if not ctx.owns_machine and not args.run_on_this_machine and not ctx.dry_run:
        ctx = attrs.evolve(ctx, dry_run=True)
        ctx.log.info("sandbox root %s: listing scripts only (see --run-on-this-machine)", ctx.root)
    snapshot = snapshot_or_report(args, agent)
    if snapshot is None:
        return EXIT_NO_METADATA
    return run_scripts(
        ctx,
        snapshot.metadata,
        args.kind,
        runner=SubprocessScriptRunner(),
        fetcher=HttpScriptFetcher(),
    )
