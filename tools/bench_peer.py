"""The peer of `nox -s bench`: Debian's google-guest-agent (Google's Go agent).

It runs exactly as ours does (tools/bench_guest.py): in a fresh copy of the
cached Debian rootfs, chrooted in private mount/PID/UTS namespaces, inside the
private network namespace of guestsim.netns where 169.254.169.254 leads to the
simulator on the host's loopback, with the same DMI identity, the same
instance_configs.cfg and the same scenario.  The agent has no "once" mode: its
provisioning figure is a first boot of the daemon (instance setup, host keys,
then accounts), which is what a new VM waits for, and so is ours.
"""

from __future__ import annotations

from guestsim import chroot as chroot_mod
from tools.bench_guest import AgentKind

PACKAGE = "google-guest-agent"
AGENT_BINARY = "/usr/bin/google_guest_agent"


def _prepare(root: chroot_mod.Chroot) -> None:
    """Nothing beyond the shared set-up: the package is in the rootfs."""


GO = AgentKind(
    key="go",
    label=f"{PACKAGE} (Go)",
    argv=(AGENT_BINARY,),
    marker="google_guest_agent",
    prepare=_prepare,
)


def dpkg_version(status: str, package: str = PACKAGE) -> str:
    """The version dpkg's status file says is installed (what actually runs).

    Only a stanza whose status is exactly "install ok installed" counts: a removed
    package keeps a "deinstall ok config-files" stanza with its old version.
    """
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line[0].isspace()
        )
        if (
            fields.get("Package", "").strip() == package
            and fields.get("Status", "").strip() == "install ok installed"
        ):
            return fields.get("Version", "?").strip()
    return "?"
