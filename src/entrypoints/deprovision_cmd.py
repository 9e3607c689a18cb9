"""`guestagent deprovision [--user] [--force] [--dry-run]`: make this disk ready to be
captured as an image that boots as a new instance.

It prints everything it will remove (see guestagent.domain.deprovision), asks for a `y`
on stdin unless --force, and removes it. --dry-run only prints. No platform is asked:
every platform's records are looked at, so nothing here talks to a metadata server.

Wiring (cli.py): `deprovision_cmd.add_parser(sub, common)` in parser(), and
`if args.command == "deprovision": return deprovision_cmd.run(args)` in main().
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ABORTED = 3


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    deprovision = subparsers.add_parser(
        "deprovision",
        parents=[common],
        help="remove instance-specific state (host keys, managed keys, records) before capturing an image",
    )
    deprovision.add_argument(
        "--user",
        action="store_true",
        help="also delete the users the agent manages (userdel -r) and root's password",
    )
    deprovision.add_argument("--force", action="store_true", help="do not ask for confirmation")
    deprovision.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; change nothing"
    )


def _confirmed(stdin: TextIO, stdout: TextIO) -> bool:
    stdout.write("Remove all of this? [y/N] ")
    stdout.flush()
    answer = stdin.readline()
    if not answer.endswith("\n"):
        stdout.write("\n")
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    from guestagent.adapters.local_filesystem import LocalFileSystem
    from guestagent.adapters.passwd_users import PasswdFiles
    from guestagent.adapters.system_clock import SystemClock
    from guestagent.domain.deprovision import changes_anything
    from guestagent.entrypoints.bootstrap import SandboxPolicy, read_config
    from guestagent.entrypoints.oneshot import options_from
    from guestagent.services import deprovision
    from guestagent.services.context import Context

    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    options = options_from(args, args.dry_run)
    fs = LocalFileSystem(options.root)
    policy = SandboxPolicy(fs.root, options.netns)
    ctx = Context(
        config=read_config(options, fs),
        fs=fs,
        runner=policy.runner(),
        users=PasswdFiles(fs),
        clock=SystemClock(),
        root=fs.root,
        dry_run=args.dry_run,
        owns_machine=not policy.confined,
    )
    planned = deprovision.plan(ctx, args.user)
    where = "" if fs.root == "/" else f" under {fs.root}"
    if args.dry_run:
        stdout.write(f"deprovision{where} (dry run, nothing changed):\n")
        stdout.write(planned.render("would"))
        return EXIT_OK
    stdout.write(f"deprovision{where}:\n")
    stdout.write(planned.render("will"))
    if not changes_anything(planned):
        return EXIT_OK
    if not args.force and not _confirmed(stdin, stdout):
        stdout.write("aborted; nothing changed\n")
        return EXIT_ABORTED
    done, failures = deprovision.apply(ctx, planned)
    for text in done:
        stdout.write(f"did {text}\n")
    for text in failures:
        stdout.write(f"FAILED {text}\n")
    if not failures:
        stdout.write("done: shut down and capture the image now; the next boot is a new instance\n")
    return EXIT_FAILED if failures else EXIT_OK
