"""Metadata for root only: a packet filter that lets only root reach the metadata service.

Opt-in (`[MetadataFirewall] root_only = true`). Instance metadata often carries secrets
(service-account tokens on GCE, IAM credentials on EC2, user data); any local user or
compromised service can read them over HTTP. With this on, packets from a process whose
owner is not root to the platform's metadata addresses are dropped on output:

    table inet guestagent_metadata {
        chain output {
            type filter hook output priority filter; policy accept;
            meta skuid != 0 ip daddr 169.254.169.254 drop
            meta skuid != 0 ip6 daddr fd00:ec2::254 drop      # EC2 only
        }
    }

nftables first (one table of the agent's own, replaced atomically, checked by listing
it as JSON), iptables/ip6tables with the owner match where `nft` is missing (a chain of
the agent's own, GUESTAGENT-METADATA, jumped to from OUTPUT). Turning it off removes
exactly that table (or chain and jump), nothing else.

This module is pure: desired state from config and platform, the current state parsed
from what the tools print, and the plan as printable commands.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence

import attrs

TABLE = "guestagent_metadata"
CHAIN = "output"
IPTABLES_CHAIN = "GUESTAGENT-METADATA"
STATE_DIR = "/var/lib/guestagent"
# Present while the agent may have a filter in place (written before one is made), so an
# agent with the option off runs no firewall tool at all unless there is one to remove.
STATE_PATH = f"{STATE_DIR}/metadata_firewall"
LINK_LOCAL = "169.254.169.254"

# Where each platform serves metadata (the addresses the filter guards).
PLATFORM_ADDRESSES: Mapping[str, tuple[str, ...]] = {
    "ec2": (LINK_LOCAL, "fd00:ec2::254"),
}


def metadata_addresses(platform: str) -> tuple[str, ...]:
    return PLATFORM_ADDRESSES.get(platform, (LINK_LOCAL,))


@attrs.frozen
class FirewallDesired:
    """`addresses` to guard; empty: no filter at all."""

    addresses: tuple[str, ...] = ()

    @property
    def v4(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 4)

    @property
    def v6(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 6)


def desired(root_only: bool, platform: str) -> FirewallDesired:
    return FirewallDesired(metadata_addresses(platform) if root_only else ())


@attrs.frozen
class FirewallCurrent:
    """What the guest has: `present` when the agent's table (or chain) exists; `exact` when
    it holds exactly the rules for `addresses` and nothing else; `hooked` (iptables) when
    OUTPUT jumps to the chain (once)."""

    present: bool
    addresses: tuple[str, ...] = ()
    exact: bool = True
    hooked: bool = True


ABSENT = FirewallCurrent(present=False)


class Unparsable(ValueError):
    """A tool printed something this module cannot read; the message is safe to log."""


# ---------------------------------------------------------------- nftables


def nft_script(want: FirewallDesired) -> str:
    """One transaction that (re)creates the table: made if missing, emptied, filled."""
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f"  chain {CHAIN} {{",
        "    type filter hook output priority 0; policy accept;",
    ]
    lines += [f"    meta skuid != 0 ip daddr {a} drop" for a in want.v4]
    lines += [f"    meta skuid != 0 ip6 daddr {a} drop" for a in want.v6]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _rule_address(expressions: object) -> str | None:
    """The address of one `meta skuid != 0 ip[6] daddr ADDR drop` rule; None for any other rule."""
    if not isinstance(expressions, list) or len(expressions) != 3:
        return None
    owner, target, verdict = expressions
    try:
        if owner["match"] != {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}:
            return None
        match = target["match"]
        payload = match["left"]["payload"]
        if match["op"] != "==" or payload["field"] != "daddr" or payload["protocol"] not in ("ip", "ip6"):
            return None
        address = str(ipaddress.ip_address(match["right"]))
        wanted_version = 4 if payload["protocol"] == "ip" else 6
        if ipaddress.ip_address(address).version != wanted_version or verdict != {"drop": None}:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return address


def parse_nft_listing(text: str) -> FirewallCurrent:
    """`nft -j list table inet guestagent_metadata` into what the table holds."""
    try:
        document = json.loads(text)
        items = document["nftables"]
        if not isinstance(items, list):
            raise TypeError("not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise Unparsable(
            f"nft printed something that is not its JSON listing ({exc.__class__.__name__})"
        ) from exc
    chains = []
    addresses: list[str] = []
    exact = True
    for item in items:
        if not isinstance(item, dict):
            exact = False
            continue
        if "chain" in item:
            chains.append(item["chain"])
        elif "rule" in item:
            rule = item["rule"]
            address = _rule_address(rule.get("expr")) if isinstance(rule, dict) else None
            if address is None or not isinstance(rule, dict) or rule.get("chain") != CHAIN:
                exact = False
            else:
                addresses.append(address)
    chain_ok = len(chains) == 1 and all(
        chains[0].get(k) == v
        for k, v in {"name": CHAIN, "type": "filter", "hook": "output", "policy": "accept"}.items()
    )
    return FirewallCurrent(
        True, tuple(addresses), exact and chain_ok and len(set(addresses)) == len(addresses)
    )


# ---------------------------------------------------------------- iptables


def parse_iptables_chain(text: str | None) -> tuple[tuple[str, ...], bool]:
    """`iptables -S GUESTAGENT-METADATA` (None: no such chain) -> (addresses, exact)."""
    if text is None:
        return (), True
    addresses: list[str] = []
    exact = True
    for line in text.splitlines():
        words = line.split()
        if not words or words == ["-N", IPTABLES_CHAIN]:
            continue
        if (
            len(words) == 11
            and words[:3] == ["-A", IPTABLES_CHAIN, "-d"]
            and words[4:] == ["-m", "owner", "!", "--uid-owner", "0", "-j", "DROP"]
        ):
            try:
                addresses.append(str(ipaddress.ip_interface(words[3]).ip))
                continue
            except ValueError:
                pass
        exact = False
    return tuple(addresses), exact


def jumps(output_rules: str) -> int:
    """How many rules of `iptables -S OUTPUT` jump to the agent's chain."""
    return sum(
        1 for line in output_rules.splitlines() if line.split() == ["-A", "OUTPUT", "-j", IPTABLES_CHAIN]
    )


def iptables_current(
    v4_chain: str | None, v4_output: str, v6_chain: str | None, v6_output: str
) -> FirewallCurrent:
    v4, exact4 = parse_iptables_chain(v4_chain)
    v6, exact6 = parse_iptables_chain(v6_chain)
    present = v4_chain is not None or v6_chain is not None
    hooked = all(
        jumps(output) == (1 if chain is not None else 0)
        for chain, output in ((v4_chain, v4_output), (v6_chain, v6_output))
    )
    return FirewallCurrent(present, v4 + v6, exact4 and exact6, hooked)


# ---------------------------------------------------------------- the plan


@attrs.frozen
class FirewallCommand:
    argv: tuple[str, ...]
    what: str
    stdin: str | None = None
    # A failure is expected when the thing to remove is already gone.
    may_fail: bool = False

    def describe(self) -> str:
        return self.what


def _same(current: FirewallCurrent, want: FirewallDesired) -> bool:
    return (
        current.present
        and current.exact
        and current.hooked
        and sorted(current.addresses) == sorted(want.addresses)
    )


def plan_nft(want: FirewallDesired, current: FirewallCurrent) -> tuple[FirewallCommand, ...]:
    if not want.addresses:
        if not current.present:
            return ()
        return (
            FirewallCommand(("nft", "delete", "table", "inet", TABLE), f"remove nftables table inet {TABLE}"),
        )
    if _same(current, want):
        return ()
    shown = ", ".join(want.addresses)
    return (
        FirewallCommand(
            ("nft", "-f", "-"),
            f"let only root reach {shown} (nftables table inet {TABLE})",
            stdin=nft_script(want),
        ),
    )


def _iptables_remove(tool: str, jump_count: int) -> list[FirewallCommand]:
    commands = [
        FirewallCommand(
            (tool, "-w", "-D", "OUTPUT", "-j", IPTABLES_CHAIN),
            f"{tool}: unhook {IPTABLES_CHAIN}",
            may_fail=True,
        )
        for _ in range(max(jump_count, 1))
    ]
    commands.append(
        FirewallCommand((tool, "-w", "-F", IPTABLES_CHAIN), f"{tool}: flush {IPTABLES_CHAIN}", may_fail=True)
    )
    commands.append(
        FirewallCommand((tool, "-w", "-X", IPTABLES_CHAIN), f"{tool}: remove {IPTABLES_CHAIN}", may_fail=True)
    )
    return commands


def plan_iptables(
    want: FirewallDesired, current: FirewallCurrent, jump_counts: Mapping[str, int] | None = None
) -> tuple[FirewallCommand, ...]:
    """Rebuild the agent's chain per tool (iptables for IPv4, ip6tables for IPv6) when
    anything differs; remove it where no address of that family is wanted."""
    if _same(current, want):
        return ()
    counts = jump_counts or {}
    commands: list[FirewallCommand] = []
    for tool, addresses in (("iptables", want.v4), ("ip6tables", want.v6)):
        count = counts.get(tool, 0)
        if not addresses:
            if current.present:
                commands += _iptables_remove(tool, count)
            continue
        commands += _iptables_remove(tool, count) if current.present else []
        commands.append(
            FirewallCommand((tool, "-w", "-N", IPTABLES_CHAIN), f"{tool}: create {IPTABLES_CHAIN}")
        )
        prefix = 32 if tool == "iptables" else 128
        for address in addresses:
            commands.append(
                FirewallCommand(
                    (
                        tool,
                        "-w",
                        "-A",
                        IPTABLES_CHAIN,
                        "-d",
                        f"{address}/{prefix}",
                        "-m",
                        "owner",
                        "!",
                        "--uid-owner",
                        "0",
                        "-j",
                        "DROP",
                    ),
                    f"{tool}: let only root reach {address}",
                )
            )
        commands.append(
            FirewallCommand(
                (tool, "-w", "-I", "OUTPUT", "1", "-j", IPTABLES_CHAIN),
                f"{tool}: hook {IPTABLES_CHAIN} into OUTPUT",
            )
        )
    return tuple(commands)


def render_state(backend: str) -> str:
    return backend + "\n"


def parse_state(text: str | None) -> str | None:
    """The backend a filter was made with ("nft" or "iptables"), or None."""
    word = (text or "").strip()
    return word if word in ("nft", "iptables") else None


def describe_all(commands: Sequence[FirewallCommand]) -> tuple[str, ...]:
    return tuple(c.describe() for c in commands)
