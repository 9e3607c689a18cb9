"""Metadata for root only (`[MetadataFirewall] root_only = true`).

- The plan in the domain: the nftables script, reading nft's JSON listing back (as nft
  1.0 prints it), idempotency, the iptables fallback, removal of exactly what was made.
- Under --root (through bootstrap(), as every command wires the agent) the sandbox's
  runner refuses the firewall tools like any other change to the machine.
- For real, in a throwaway network namespace (root, iproute2, nftables or iptables,
  util-linux's setpriv): 169.254.169.254 and fd00:ec2::254 on the namespace's loopback with
  an HTTP server behind them; the subsystem's apply runs through a runner that prefixes
  `ip netns exec NS`; root can read, nobody (setpriv --reuid=65534) cannot; turning the
  option off removes the table (or chain) and nobody can read again; another table in the
  namespace is left alone. Nothing is ever sent to those addresses outside the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain import metadata_firewall as domain
from guestagent.domain.config import Config, MetadataFirewall
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.metadata_firewall import MetadataFirewallSubsystem

EC2 = InstanceMetadata(platform="ec2", instance_id="i-0123456789abcdef0")
GCE = InstanceMetadata(platform="gce", instance_id="1")
ON = Config(MetadataFirewall=MetadataFirewall(root_only=True))
OFF = Config()
# nft 1.0.6's `nft -j list table inet guestagent_metadata` for the EC2 table.
NFT_LISTING = json.dumps(
    {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "guestagent_metadata", "handle": 2}},
            {
                "chain": {
                    "family": "inet",
                    "table": "guestagent_metadata",
                    "name": "output",
                    "handle": 1,
                    "type": "filter",
                    "hook": "output",
                    "prio": 0,
                    "policy": "accept",
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "guestagent_metadata",
                    "chain": "output",
                    "handle": 2,
                    "expr": [
                        {"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}},
                        {
                            "match": {
                                "op": "==",
                                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                "right": "169.254.169.254",
                            }
                        },
                        {"drop": None},
                    ],
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "guestagent_metadata",
                    "chain": "output",
                    "handle": 3,
                    "expr": [
                        {"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}},
                        {
                            "match": {
                                "op": "==",
                                "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                                "right": "fd00:ec2::254",
                            }
                        },
                        {"drop": None},
                    ],
                }
            },
        ]
    }
)


# ---------------------------------------------------------------- the plan (pure)


def test_addresses_per_platform() -> None:
    assert domain.desired(True, "ec2").addresses == ("169.254.169.254", "fd00:ec2::254")
    assert domain.desired(True, "gce").addresses == ("169.254.169.254",)
    assert domain.desired(False, "ec2").addresses == ()


def test_the_nft_script_replaces_the_table_in_one_transaction() -> None:
    script = domain.nft_script(domain.desired(True, "ec2"))
    assert script.splitlines()[:3] == [
        "table inet guestagent_metadata",
        "delete table inet guestagent_metadata",
        "table inet guestagent_metadata {",
    ]
    assert "meta skuid != 0 ip daddr 169.254.169.254 drop" in script
    assert "meta skuid != 0 ip6 daddr fd00:ec2::254 drop" in script


def test_nfts_listing_is_read_back_and_the_plan_is_then_empty() -> None:
    current = domain.parse_nft_listing(NFT_LISTING)
    assert current.present and current.exact and current.addresses == ("169.254.169.254", "fd00:ec2::254")
    assert domain.plan_nft(domain.desired(True, "ec2"), current) == ()
    # The GCE platform wants one address only: the table is made again.
    assert [c.argv for c in domain.plan_nft(domain.desired(True, "gce"), current)] == [("nft", "-f", "-")]
    # Off: exactly that table goes.
    assert [c.argv for c in domain.plan_nft(domain.desired(False, "ec2"), current)] == [
        ("nft", "delete", "table", "inet", "guestagent_metadata")
    ]
    assert domain.plan_nft(domain.desired(False, "ec2"), domain.ABSENT) == ()


def test_a_rule_someone_added_to_the_table_makes_it_be_rebuilt() -> None:
    document = json.loads(NFT_LISTING)
    document["nftables"].append({"rule": {"chain": "output", "expr": [{"accept": None}]}})
    current = domain.parse_nft_listing(json.dumps(document))
    assert not current.exact
    assert domain.plan_nft(domain.desired(True, "ec2"), current) != ()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"nftables": 3}', "Error: nothing"])
def test_an_unreadable_listing_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(domain.Unparsable):
        domain.parse_nft_listing(text)


def test_the_iptables_fallback_plan_and_its_listing() -> None:
    want = domain.desired(True, "ec2")
    commands = domain.plan_iptables(want, domain.ABSENT)
    argvs = [c.argv for c in commands]
    assert (
        "iptables",
        "-w",
        "-A",
        "GUESTAGENT-METADATA",
        "-d",
        "169.254.169.254/32",
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "0",
        "-j",
        "DROP",
    ) in argvs
    assert ("ip6tables", "-w", "-I", "OUTPUT", "1", "-j", "GUESTAGENT-METADATA") in argvs
    chain4 = "-N GUESTAGENT-METADATA\n-A GUESTAGENT-METADATA -d 169.254.169.254/32 -m owner ! --uid-owner 0 -j DROP\n"
    chain6 = "-N GUESTAGENT-METADATA\n-A GUESTAGENT-METADATA -d fd00:ec2::254/128 -m owner ! --uid-owner 0 -j DROP\n"
    hooked = "-P OUTPUT ACCEPT\n-A OUTPUT -j GUESTAGENT-METADATA\n"
    current = domain.iptables_current(chain4, hooked, chain6, hooked)
    assert current.exact and current.hooked
    assert domain.plan_iptables(want, current) == ()
    removal = [
        c.argv
        for c in domain.plan_iptables(domain.desired(False, "ec2"), current, {"iptables": 1, "ip6tables": 1})
    ]
    assert removal[:3] == [
        ("iptables", "-w", "-D", "OUTPUT", "-j", "GUESTAGENT-METADATA"),
        ("iptables", "-w", "-F", "GUESTAGENT-METADATA"),
        ("iptables", "-w", "-X", "GUESTAGENT-METADATA"),
    ]
    # Hooked twice, or not at all: rebuilt.
    assert domain.plan_iptables(want, domain.iptables_current(chain4, hooked * 2, chain6, hooked)) != ()
    assert domain.plan_iptables(want, domain.iptables_current(chain4, "", chain6, hooked)) != ()


# ---------------------------------------------------------------- a sandbox root refuses it


def test_under_a_sandbox_root_the_firewall_tools_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from guestagent.entrypoints.bootstrap import Options, bootstrap

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    agent = bootstrap(
        Options(metadata_url="http://127.0.0.1:9/", platform="gce", root=str(root)),
        subsystems=[MetadataFirewallSubsystem()],
        config=ON,
    )
    try:
        with caplog.at_level("INFO"):
            outcomes = agent.scheduler().run_due(agent.ctx, EC2)
    finally:
        agent.source.close()
    assert [(o.subsystem, o.actions, o.failures) for o in outcomes] == [("metadata_firewall", (), ())]
    assert "not run in sandbox root" in caplog.text and "kept as is" in caplog.text
    assert not (root / domain.STATE_PATH.lstrip("/")).exists()


def test_off_and_never_on_runs_no_tool_at_all(tmp_path: Path) -> None:
    calls: list[Sequence[str]] = []

    class Recording:
        def which(self, program: str) -> str | None:
            return f"/usr/sbin/{program}"

        def run(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
            calls.append(argv)
            return CommandResult(tuple(argv), 0, "", "")

    fs = LocalFileSystem(str(tmp_path))
    ctx = Context(
        config=OFF,
        fs=fs,
        runner=Recording(),
        users=PasswdFiles(fs),
        clock=SystemClock(),
        root=str(tmp_path),
        owns_machine=True,
    )
    assert not MetadataFirewallSubsystem().enabled(ctx, GCE)
    assert calls == []


# ---------------------------------------------------------------- for real, in a network namespace

SERVER = r"""
import http.server, socket, sys, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"metadata\n")
    def log_message(self, *args):
        pass
class V6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
servers = [http.server.ThreadingHTTPServer(("169.254.169.254", 80), Handler), V6(("fd00:ec2::254", 80), Handler)]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""
# The handshake is the kernel's (instant unless the filter drops it): a short connect
# timeout decides "blocked"; the answer itself may take longer on a loaded machine.
CLIENT = r"""
import socket, sys
sock = socket.create_connection((sys.argv[1], 80), timeout=1.5)
sock.settimeout(10.0)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("ok" if b"metadata" in sock.makefile("rb").read() else "bad")
"""
URLS = {"v4": "169.254.169.254", "v6": "fd00:ec2::254"}
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _needs(backend: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a network namespace")
    missing = [
        tool
        for tool in ("ip", "setpriv", backend, *(("ip6tables",) if backend == "iptables" else ()))
        if shutil.which(tool) is None
    ]
    if missing:
        debian = {
            "ip": "iproute2",
            "setpriv": "util-linux",
            "nft": "nftables",
            "iptables": "iptables",
            "ip6tables": "iptables",
        }
        pytest.skip(f"needs {', '.join(missing)} (Debian: {' '.join(sorted({debian[m] for m in missing}))})")


class NetnsRunner:
    """The agent's real runner, every program started inside the test's namespace."""

    def __init__(self, netns: str, hide: Sequence[str] = ()) -> None:
        self.netns, self.hide, self.inner = netns, set(hide), SubprocessRunner()

    def which(self, program: str) -> str | None:
        return None if program in self.hide else self.inner.which(program)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        return self.inner.run(
            ["ip", "netns", "exec", self.netns, *argv], timeout=timeout, env=env, stdin=stdin
        )


def _ns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=60, check=check
    )


@contextlib.contextmanager
def throwaway_namespace() -> Iterator[str]:
    """A network namespace with the metadata addresses on its loopback and a server behind
    them; deleted on the way out, also on failure."""
    netns = f"garel-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    server = None
    try:
        _ns(netns, "ip", "link", "set", "lo", "up")
        _ns(netns, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
        _ns(netns, "ip", "-6", "addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, PYTHON, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield netns
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)


def reachable(netns: str, family: str, as_nobody: bool) -> bool:
    who = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    done = _ns(netns, *who, PYTHON, "-c", CLIENT, URLS[family], check=False)
    return done.returncode == 0 and done.stdout.strip() == "ok"


def context(tmp_path: Path, config: Config, runner: NetnsRunner) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    return Context(
        config=config,
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=SystemClock(),
        root=str(tmp_path),
        owns_machine=True,
    )


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_only_root_reaches_the_metadata_addresses_in_a_namespace(backend: str, tmp_path: Path) -> None:
    _needs(backend)
    host_tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=False
    ).stdout
    with throwaway_namespace() as netns:
        runner = NetnsRunner(netns, hide=("nft",) if backend == "iptables" else ())
        # Someone else's filter in the namespace: never touched.
        if backend == "nft":
            _ns(netns, "nft", "add", "table", "inet", "someone_else")
        else:
            _ns(netns, "iptables", "-w", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "DROP")
        for family in URLS:
            assert reachable(netns, family, as_nobody=False) and reachable(netns, family, as_nobody=True), (
                family
            )

        subsystem = MetadataFirewallSubsystem()
        on = context(tmp_path, ON, runner)
        assert subsystem.enabled(on, EC2)
        outcome = subsystem.reconcile(on, EC2)
        assert outcome.ok and outcome.actions, outcome
        assert (tmp_path / domain.STATE_PATH.lstrip("/")).read_text() == f"{backend}\n"
        for family in URLS:
            assert reachable(netns, family, as_nobody=False), f"root lost {family}"
            assert not reachable(netns, family, as_nobody=True), f"nobody still reaches {family}"
        again = subsystem.reconcile(on, EC2)
        assert again.ok and again.actions == (), again  # checked by listing: nothing to do

        off = context(tmp_path, OFF, runner)
        assert subsystem.enabled(off, EC2)  # something to remove
        removed = subsystem.reconcile(off, EC2)
        assert removed.ok and removed.actions, removed
        for family in URLS:
            assert reachable(netns, family, as_nobody=True), f"nobody still cannot reach {family}"
        assert not (tmp_path / domain.STATE_PATH.lstrip("/")).exists()
        assert not subsystem.enabled(off, EC2)
        if backend == "nft":
            tables = _ns(netns, "nft", "list", "tables").stdout
            assert "guestagent_metadata" not in tables and "someone_else" in tables
        else:
            rules = _ns(netns, "iptables", "-w", "-S").stdout
            assert "GUESTAGENT-METADATA" not in rules and "-A OUTPUT -d 192.0.2.1/32 -j DROP" in rules
            assert "GUESTAGENT-METADATA" not in _ns(netns, "ip6tables", "-w", "-S").stdout
    # The host's own ruleset never saw any of it.
    assert (
        subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        == host_tables
    )
