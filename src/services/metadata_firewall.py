"""Metadata for root only (`[MetadataFirewall] root_only`): observe the agent's packet filter
through the CommandRunner (`nft`, else `iptables`/`ip6tables`), plan in the domain, apply.

Under --root every firewall tool is refused by the sandbox's runner, like any other change
to the machine: the subsystem says so once and keeps things as they are.
"""

from __future__ import annotations

from guestagent.domain import metadata_firewall as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

COMMAND_TIMEOUT = 30.0
# What the sandbox's runner answers for a program it will not run (adapters.confined_runner).
REFUSED = 126


class _Refused(Exception):
    pass


class _Failed(Exception):
    pass


def _run(ctx: Context, argv: tuple[str, ...], stdin: str | None = None) -> CommandResult:
    result = ctx.runner.run(argv, timeout=COMMAND_TIMEOUT, stdin=stdin)
    if result.returncode == REFUSED and not ctx.owns_machine:
        raise _Refused(result.stderr.strip() or f"{argv[0]} refused")
    return result


def _error(result: CommandResult) -> str:
    return f"{' '.join(result.argv[:4])} exit {result.returncode}: {result.stderr.strip()[:300]}"


def backend(ctx: Context) -> str | None:
    if ctx.runner.which("nft"):
        return "nft"
    if ctx.runner.which("iptables"):
        return "iptables"
    return None


def observe_nft(ctx: Context) -> domain.FirewallCurrent:
    result = _run(ctx, ("nft", "-j", "list", "table", "inet", domain.TABLE))
    if result.ok:
        return domain.parse_nft_listing(result.stdout)
    if "No such file or directory" in result.stderr:
        return domain.ABSENT
    raise _Failed(f"cannot list the table: {_error(result)}")


def observe_iptables(
    ctx: Context, want: domain.FirewallDesired
) -> tuple[domain.FirewallCurrent, dict[str, int]]:
    listings: dict[str, tuple[str | None, str]] = {}
    for tool, needed in (("iptables", True), ("ip6tables", bool(want.v6))):
        if not ctx.runner.which(tool):
            if needed:
                raise _Failed(f"{tool} not found")
            listings[tool] = (None, "")
            continue
        chain = _run(ctx, (tool, "-w", "-S", domain.IPTABLES_CHAIN))
        output = _run(ctx, (tool, "-w", "-S", "OUTPUT"))
        if not output.ok:
            raise _Failed(f"cannot list OUTPUT: {_error(output)}")
        listings[tool] = (chain.stdout if chain.ok else None, output.stdout)
    (v4_chain, v4_output), (v6_chain, v6_output) = listings["iptables"], listings["ip6tables"]
    current = domain.iptables_current(v4_chain, v4_output, v6_chain, v6_output)
    counts = {tool: domain.jumps(output) for tool, (_, output) in listings.items()}
    return current, counts


class MetadataFirewallSubsystem:
    name = "metadata_firewall"

    def __init__(self) -> None:
        self._warnings = WarnOnce("metadata_firewall: ")

    def _recorded(self, ctx: Context) -> str | None:
        return domain.parse_state(ctx.fs.read_text(domain.STATE_PATH))

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        # Off and nothing made earlier: no firewall tool is run at all.
        return ctx.config.MetadataFirewall.root_only or self._recorded(ctx) is not None

    def inputs(self, metadata: InstanceMetadata) -> object:
        return metadata.platform

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        want = domain.desired(ctx.config.MetadataFirewall.root_only, metadata.platform)
        recorded = self._recorded(ctx)
        # Removing: with the tool that made it. Making: nftables where there is nft.
        tool = recorded if not want.addresses and recorded else backend(ctx)
        if tool is None:
            return Outcome(self.name, failures=("neither nft nor iptables found",))
        try:
            if tool == "nft":
                current = observe_nft(ctx)
                commands = domain.plan_nft(want, current)
            else:
                current, counts = observe_iptables(ctx, want)
                commands = domain.plan_iptables(want, current, counts)
        except _Refused as exc:
            self._warnings.warn(ctx.log, f"not run under root {ctx.root}: {exc}; kept as is")
            return Outcome(self.name)
        except (_Failed, domain.Unparsable) as exc:
            return Outcome(self.name, failures=(str(exc),))
        if ctx.dry_run:
            return Outcome(self.name, domain.describe_all(commands))
        journal = ApplyJournal(ctx.log, "metadata_firewall: ")
        try:
            if want.addresses and recorded != tool:
                # Recorded first: a crash after the filter is made still leaves a note to remove it.
                ctx.fs.makedirs(domain.STATE_DIR, 0o755)
                ctx.fs.write_atomic(domain.STATE_PATH, domain.render_state(tool), mode=0o644)
            for command in commands:
                try:
                    result = _run(ctx, command.argv, command.stdin)
                except _Refused as exc:
                    self._warnings.warn(ctx.log, f"not run under root {ctx.root}: {exc}; kept as is")
                    return Outcome(self.name, tuple(journal.done))
                if not result.ok and not command.may_fail:
                    journal.failed(f"{command.describe()} failed: {_error(result)}")
                    break
                if result.ok:
                    journal.did(command)
            done, failures = journal.result()
            if not want.addresses and not failures and recorded is not None:
                ctx.fs.remove(domain.STATE_PATH)
        except (OSError, UnsafePath) as exc:
            journal.failed(f"cannot record the filter in {domain.STATE_PATH}: {exc}")
            done, failures = journal.result()
        return Outcome(self.name, tuple(done), tuple(failures))
