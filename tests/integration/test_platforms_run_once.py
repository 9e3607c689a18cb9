"""`guestagent run --once` on the platforms that give keys without user names: the keys go
to the image's default user, with every guarantee GCE users have (real shadow-utils in a
sandbox root, the simulator on loopback), and `--platform auto` finds the platform."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import group_members, passwd_entry, read, scenario
from tests.keys import ED25519, ED25519_BOB

pytestmark = pytest.mark.root
MARK = "# Added by guestagent"


@pytest.fixture
def default_user(sandbox: Path) -> Path:
    config = sandbox / "etc/default/instance_configs.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[Accounts]\ndefault_user = debian\ndefault_user_groups = adm,sudo\n")
    return sandbox


def check_default_user(sandbox: Path, platform: str, keys: list[str]) -> None:
    entry = passwd_entry(sandbox, "debian")
    assert entry is not None
    uid, gid = int(entry[2]), int(entry[3])
    ssh = sandbox / "home/debian/.ssh"
    keys_file = ssh / "authorized_keys"
    assert read(keys_file) == "".join(f"{MARK}\n{k}\n" for k in keys)
    for path, mode in ((ssh, 0o700), (keys_file, 0o600)):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path
    assert "debian" in (group_members(sandbox, "guestagent-sudoers") or set())
    assert "debian" in (group_members(sandbox, "adm") or set())
    assert read(sandbox / f"var/lib/guestagent/{platform}_users") == "debian\n"
    assert read(sandbox / "etc/sudoers.d/guestagent") == "%guestagent-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n"
    # Nothing of Google's: another platform's accounts and records live under the agent's names.
    assert not (sandbox / "var/lib/google/google_users").exists()
    assert not (sandbox / "etc/google_instance_id").exists()
    assert (read(sandbox / "var/lib/guestagent/instance-id") or "").startswith("i-")


@pytest.mark.parametrize("platform", ["ec2", "auto"])
def test_ec2_imdsv2_keys_go_to_the_default_user(default_user: Path, run_agent, platform: str) -> None:
    with Simulator(scenario({"alice": [ED25519]}), platforms=("ec2",)) as sim:
        sim.set("imds/http-tokens", "required", platform="ec2")
        result = run_agent("run", "--once", url=sim.url("ec2"), platform=platform)
        assert result.returncode == 0, result.stdout + result.stderr
        check_default_user(default_user, "ec2", [ED25519])
        # Every metadata GET carried a token: IMDSv2 only by default. (Under auto, the GCE
        # probe's one GET asked first and was told no.)
        gets = [r for r in sim.requests(method="GET") if "-data" in r["path"]]
        assert gets and all("x-aws-ec2-metadata-token" in r["headers"] for r in gets)
        again = run_agent("run", "--once", url=sim.url("ec2"), platform=platform)
    assert "accounts: nothing to do" in again.stdout
    if platform == "auto":
        assert "platform ec2: " in result.stderr


def test_ec2_without_a_default_user_refuses_the_keys_and_says_so(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]}), platforms=("ec2",)) as sim:
        result = run_agent("run", "--once", url=sim.url("ec2"), platform="ec2")
    assert result.returncode == 0, result.stderr
    assert "[Accounts] default_user is not set" in result.stderr
    assert not (sandbox / "home/debian").exists()


def test_ec2_key_change_rewrites_only_the_default_users_file(default_user: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]}), platforms=("ec2",)) as sim:
        assert run_agent("run", "--once", url=sim.url("ec2"), platform="ec2").returncode == 0
        own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqhMMDjKiHa0eV1aJ8KRUEEYL82M8WpxghbfuSI94sC own\n"
        keys_file = default_user / "home/debian/.ssh/authorized_keys"
        keys_file.write_text(own + keys_file.read_text())
        sim.apply(scenario({"alice": [ED25519_BOB]}))
        result = run_agent("run", "--once", url=sim.url("ec2"), platform="ec2")
    assert result.returncode == 0, result.stderr
    assert read(keys_file) == f"{own}{MARK}\n{ED25519_BOB}\n"


def test_detect_names_the_platform_and_why(sandbox: Path) -> None:
    import subprocess

    from tests.integration.conftest import AGENT

    with Simulator(scenario({}), platforms=("ec2",)) as sim:
        done = subprocess.run(
            [*AGENT, "detect", "--root", str(sandbox), "--metadata-url", sim.url("ec2")],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 0, done.stderr
    platform, reason = done.stdout.strip().split("\t")
    assert platform == "ec2" and reason


def test_detect_with_nothing_there_fails_within_its_bound(sandbox: Path) -> None:
    import subprocess
    import time

    from tests.integration.conftest import AGENT

    config = sandbox / "etc/default/instance_configs.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[Core]\ndetect_timeout = 2\n")
    started = time.monotonic()
    done = subprocess.run(
        [*AGENT, "detect", "--root", str(sandbox), "--metadata-url", "http://127.0.0.1:9/"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert "no platform detected" in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 60  # the bound is 2 s; the margin is for a loaded machine's interpreter start
