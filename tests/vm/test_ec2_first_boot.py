"""EC2: one guest that looks like an EC2 instance, booted once, every check on that boot.

What makes it EC2, as on the real cloud: SMBIOS system manufacturer "Amazon
EC2" (DMI sys_vendor), and the simulator playing EC2's IMDS at
169.254.169.254:80 with IMDSv2 required (a GET without a session token is
answered 401). The agent runs as the image ships it (`guestagent daemon`, no
--platform, `[Core] platform` unset = auto), so it has to detect EC2 itself.
EC2's keys have no user name: the image's `[Accounts] default_user` (debian,
from /etc/default/instance_configs.cfg.distro, see simulator/vm/image.py)
receives them, and the agent creates that user with sudo.

Tests share the VM and run in file order (the live key change is last).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.vm.image import DEFAULT_USER, ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import SMBIOS, Runner

from .conftest import UserKey, record_timing
from .guest import account, agent_journal, boot_report, dmi

TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
# No long poll on EC2: the agent walks the IMDS again every [EC2] poll_interval (10 s).
LIVE_CHANGE_TIMEOUT = 90
# us-east-1: EC2's own hostnames there are ip-A-B-C-D.ec2.internal.
EXPECTED_HOSTNAME = "ip-10-128-0-2"


def scenario(*keys: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "4520031799277581760", "name": "vm-ec2", "zone": "us-east-1a"},
        # The key pairs' names are labels on EC2, never user names.
        "users": [{"name": key.name, "keys": [key.public]} for key in keys],
        "network": {"interfaces": [{"mac": "42:01:0a:80:00:02", "ip": "10.128.0.2/20"}]},
        # IMDSv2 only, from the first request on.
        "overrides": {"ec2": {"imds": {"http-tokens": "required"}}},
    }


@pytest.fixture(scope="module")
def sim(user_keys: Callable[[str], UserKey]) -> Iterator[Simulator]:
    with Simulator(scenario(user_keys("alice")), platforms=("ec2",)) as s:
        yield s


@pytest.fixture(scope="module")
def vm(
    guest_image: ImagePaths,
    vm_runner: Runner,
    sim: Simulator,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    with Vm(
        guest_image, sim.port, vm_runner, keep_dir=vm_logs_dir / "ec2_first_boot", smbios=SMBIOS["ec2"]
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login(DEFAULT_USER, alice.private), 300, 0.5):
            raise TimeoutError(f"{DEFAULT_USER} never logged in with the EC2 key\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"ec2 first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_default_user_logs_in_with_the_imds_key(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $HOME", user=DEFAULT_USER, key=user_keys("alice").private)
    assert result.stdout.split() == [DEFAULT_USER, f"/home/{DEFAULT_USER}"]


def test_default_user_was_created_with_passwordless_sudo(vm: Vm, user_keys: Callable[[str], UserKey]):
    key = user_keys("alice").private
    assert vm.ssh("sudo -n id -un", user=DEFAULT_USER, key=key).stdout.strip() == "root"
    groups = vm.ssh("id -Gn", user=DEFAULT_USER, key=key).stdout.split()
    assert "guestagent-sudoers" in groups, groups
    assert vm.ssh("stat -c '%a %U' /etc/sudoers.d/guestagent").stdout.split() == ["440", "root"]
    assert vm.ssh("visudo -cf /etc/sudoers.d/guestagent", check=False).returncode == 0


def test_key_pair_name_is_not_a_user(vm: Vm, user_keys: Callable[[str], UserKey]):
    assert account(vm, "alice") is None
    assert not vm.can_login(DEFAULT_USER, user_keys("mallory").private)


def test_agent_ran_without_a_platform_and_detected_ec2_from_dmi(vm: Vm):
    assert dmi(vm, "sys_vendor") == "Amazon EC2"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "guestagent daemon" in exec_start and "--platform" not in exec_start, exec_start
    config = vm.ssh("guestagent config").stdout
    assert "platform = auto" in config.splitlines(), config
    journal = agent_journal(vm)
    assert "platform ec2: DMI sys_vendor is 'Amazon EC2'" in journal, journal[-3000:]


def test_imds_saw_token_puts_and_only_token_carrying_gets(sim: Simulator, vm: Vm):
    seen = sim.requests()
    # DMI decided: nothing was probed, no other platform's path was asked for.
    assert seen and all(r["path"].startswith("/latest/") for r in seen), sorted({r["path"] for r in seen})
    puts = [r for r in seen if r["method"] == "PUT"]
    assert puts and all(r["path"] == TOKEN_PATH for r in puts)
    assert all(r["status"] == 200 and r["headers"].get(TTL_HEADER) == "21600" for r in puts), puts
    gets = [r for r in seen if r["method"] == "GET"]
    assert gets, "no GET reached the IMDS"
    assert all(r["headers"].get(TOKEN_HEADER) for r in gets), [r["path"] for r in gets if TOKEN_HEADER not in r["headers"]]
    # IMDSv2 required: an untokened GET would have been 401; the agent never needed one.
    assert [r["path"] for r in gets if r["status"] not in (200, 404)] == []
    # A token serves many GETs (it lives 6 h): not one PUT per GET.
    assert len({r["headers"][TOKEN_HEADER] for r in gets}) <= len(puts) < len(gets)
    walked = {r["path"] for r in gets}
    assert {"/latest/meta-data/public-keys/", "/latest/meta-data/public-keys/0/openssh-key"} <= walked, walked


def test_hostname_comes_from_local_hostname(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == EXPECTED_HOSTNAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


def test_state_records_the_default_user(vm: Vm):
    recorded = vm.ssh("cat /var/lib/guestagent/ec2_users").stdout.split()
    assert recorded == [DEFAULT_USER]


# Last: it changes the metadata.
def test_added_key_logs_in_without_a_reboot(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    alice, bob = user_keys("alice"), user_keys("bob")
    assert not vm.can_login(DEFAULT_USER, bob.private)
    sim.apply(scenario(alice, bob))
    changed = time.monotonic()
    assert wait_until(lambda: vm.can_login(DEFAULT_USER, bob.private), LIVE_CHANGE_TIMEOUT), (
        agent_journal(vm)[-3000:]
    )
    record_timing("ec2: IMDS key added -> default user logs in with it", f"{time.monotonic() - changed:.1f} s")
    assert vm.can_login(DEFAULT_USER, alice.private)
    assert account(vm, "bob") is None
    assert vm.boots == 1
