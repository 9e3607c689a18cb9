"""Small readers of guest state shared by the VM tests (all through the harness's root SSH)."""

from __future__ import annotations

import subprocess

from guestsim.vm.machine import Vm, wait_until

PENDING_HOST_KEYS = "/var/lib/guestagent/pending-host-keys"


def unit_times(vm: Vm, unit: str) -> dict[str, float]:
    """systemd's monotonic timestamps for `unit`, in seconds since the kernel started."""
    props = ("InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    out = vm.ssh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    times: dict[str, float] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        times[key] = int(value or 0) / 1e6
    return times


def boot_report(vm: Vm, boot_to_ssh: float) -> str:
    """Where the boot's time went: the whole boot, and the agent's share of it."""
    agent = unit_times(vm, "guestagent.service")
    sshd = unit_times(vm, "ssh.service")
    agent_start = agent["InactiveExitTimestampMonotonic"]
    agent_ready = agent["ActiveEnterTimestampMonotonic"]
    try:
        analyze = vm.ssh("systemd-analyze; systemd-analyze blame | head -n 8", timeout=120, check=False).stdout
    except subprocess.TimeoutExpired:  # diagnostics only: a guest starved by a loaded host
        analyze = "(systemd-analyze did not answer within 120 s)\n"
    return (
        f"QEMU start -> first SSH login with a metadata key: {boot_to_ssh:.1f} s\n"
        f"guestagent.service started {agent_start:.1f} s after the kernel, READY at "
        f"{agent_ready:.1f} s (agent's first reconcile: {agent_ready - agent_start:.1f} s); "
        f"ssh.service active at {sshd['ActiveEnterTimestampMonotonic']:.1f} s\n{analyze}"
    )


def authorized_users(vm: Vm) -> set[str]:
    """Users with a home directory created by the agent."""
    out = vm.ssh("ls /home").stdout
    return set(out.split())


def agent_journal(vm: Vm) -> str:
    """The agent's log for this boot (messages only), as the journal has it."""
    return vm.ssh("journalctl --no-pager -b -o cat -u guestagent.service").stdout


def dmi(vm: Vm, field: str) -> str:
    """One DMI field as the guest's kernel shows it (what the agent's detection reads)."""
    return vm.ssh(f"cat /sys/class/dmi/id/{field}").stdout.strip()


def account(vm: Vm, user: str) -> str | None:
    """The passwd line of `user` in the guest, or None."""
    result = vm.ssh(f"getent passwd {user}", check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def host_keys_settled(vm: Vm, timeout: float = 300) -> None:
    """Wait until the host keys made after READY (RSA) are made: before that, the set sshd
    offers still grows. Fails with the agent's last words when they never are."""
    done = wait_until(lambda: vm.ssh(f"test ! -e {PENDING_HOST_KEYS}", check=False).returncode == 0, timeout, 2)
    assert done, vm.ssh(
        f"cat {PENDING_HOST_KEYS}; journalctl -u guestagent --no-pager | tail -20", check=False
    ).stdout
