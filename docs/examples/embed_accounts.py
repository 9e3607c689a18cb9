"""Another agent borrowing three pieces of guestagent: a provider to read metadata, the pure
accounts plan, and the apply layer driven through a command runner of its own.

    python docs/examples/embed_accounts.py --platform ec2 --metadata-url URL --root DIR \
        [--default-user NAME] [--apply]

It prints the plan; with --apply it carries it out, every command going through
`AuditingRunner`, which is where an embedding agent puts its own policy (here: log
each argv, and keep account tools inside --root with shadow-utils' --prefix).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from guestagent.adapters.confined_runner import ConfinedRunner
from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.platforms.registry import provider
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain import accounts
from guestagent.domain.config import Accounts, Config
from guestagent.ports.commands import CommandResult
from guestagent.services.accounts import apply, observe
from guestagent.services.context import Context


class AuditingRunner:
    """The embedding agent's own runner: it sees every argv before anything runs."""

    def __init__(self, root: str) -> None:
        inner = SubprocessRunner()
        self._inner = ConfinedRunner(inner, root) if root != "/" else inner

    def which(self, program: str) -> str | None:
        return self._inner.which(program)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        print("runs:", " ".join(argv))
        return self._inner.run(argv, timeout=timeout, env=env, stdin=stdin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--root", required=True)
    parser.add_argument("--default-user", default="")
    parser.add_argument("--apply", action="store_true")
    args = parser.parse_args()

    # 1. A provider reads the platform's metadata into the neutral model.
    config = Config(Accounts=Accounts(default_user=args.default_user))
    options = ProviderOptions(url=args.metadata_url, root=args.root, config=config)
    source = provider(args.platform).open(options)
    try:
        metadata = source.get().metadata
    finally:
        source.close()

    # 2. The pure plan: what metadata wants against what the guest has.
    fs = LocalFileSystem(args.root)
    ctx = Context(
        config=config, fs=fs, runner=AuditingRunner(fs.root), users=PasswdFiles(fs), clock=SystemClock(),
        root=fs.root,
    )
    want = accounts.desired(metadata, datetime.now(UTC), config.Accounts.default_user)
    have = observe(ctx, want.keys, layout=want.layout)
    planned = accounts.plan(want, have, config.Accounts)
    for note in planned.notes:
        print("note:", note)
    for action in planned.actions:
        print("plan:", action.describe())

    # 3. The apply layer, through the runner above.
    if args.apply:
        done, failures = apply(ctx, planned.actions, have.users)
        print(f"applied {len(done)} actions, {len(failures)} failed")
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
