"""`guestagent run --once` against the simulator, with real shadow-utils in a sandbox root."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import group_members, passwd_entry, read, scenario, ssh_keys_value
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA

pytestmark = pytest.mark.root
MARK = "# Added by Google"


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """inode, mtime and mode of every file: an unchanged snapshot means nothing was written."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_ino, st.st_mtime_ns, st.st_mode)
    return out


def test_first_run_creates_users_groups_sudoers_and_keys(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519, RSA], "bob": [ED25519_BOB]})) as sim:
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stderr
    assert "accounts: did create user alice" in result.stdout

    for user in ("alice", "bob"):
        fields = passwd_entry(sandbox, user)
        assert fields is not None and fields[5] == f"/home/{user}" and fields[6] == "/bin/bash"
        uid, gid = int(fields[2]), int(fields[3])
        ssh_dir = sandbox / f"home/{user}/.ssh"
        keys = ssh_dir / "authorized_keys"
        assert stat.S_IMODE(ssh_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        assert (keys.stat().st_uid, keys.stat().st_gid, ssh_dir.stat().st_uid) == (uid, gid, uid)
    assert read(sandbox / "home/alice/.ssh/authorized_keys") == f"{MARK}\n{ED25519}\n{MARK}\n{RSA}\n"
    assert group_members(sandbox, "google-sudoers") == {"alice", "bob"}
    # configured groups that exist in the sandbox join in the same useradd
    assert "alice" in (group_members(sandbox, "adm") or set())

    sudoers = sandbox / "etc/sudoers.d/google_sudoers"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert sudoers.read_text() == "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n"
    if os.path.exists("/usr/sbin/visudo"):
        assert subprocess.run(["/usr/sbin/visudo", "-cf", str(sudoers)], capture_output=True).returncode == 0
    state = sandbox / "var/lib/google/google_users"
    assert state.read_text() == "alice\nbob\n"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    # the machine itself was not touched
    assert "alice:" not in Path("/etc/passwd").read_text()


def test_second_run_with_same_metadata_changes_nothing(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        before = snapshot_tree(sandbox)
        again = run_agent("run", "--once", url=sim.url("gce"))
    assert again.returncode == 0
    lines = again.stdout.splitlines()
    assert "accounts: nothing to do" in lines
    # Host public keys are re-published on every start (a PUT, so a lost one heals); nothing else happens.
    assert [line for line in lines if not line.endswith(": nothing to do")] == [
        "instance_setup: did publish SSH host public keys to guest attributes"
    ]
    assert snapshot_tree(sandbox) == before


def test_removed_user_keeps_own_keys_and_loses_sudo(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519], "bob": [ED25519_BOB]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        keys = sandbox / "home/alice/.ssh/authorized_keys"
        own = f"# alice's laptop\n{ECDSA}\n"
        keys.write_text(own + keys.read_text())
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"bob": [ED25519_BOB]}))
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stderr
    assert keys.read_text() == own
    assert group_members(sandbox, "google-sudoers") == {"bob"}
    assert passwd_entry(sandbox, "alice") is not None  # account and home stay by default
    assert (sandbox / "var/lib/google/google_users").read_text() == "bob\n"


def test_deprovision_remove_deletes_the_account(sandbox: Path, run_agent, tmp_path: Path) -> None:
    config = tmp_path / "instance_configs.cfg"
    config.write_text("[Accounts]\ndeprovision_remove = true\n")
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        assert run_agent("run", "--once", "--config", str(config), url=sim.url("gce")).returncode == 0
        sim.set("instance/attributes/ssh-keys", "")
        result = run_agent("run", "--once", "--config", str(config), url=sim.url("gce"))
    assert result.returncode == 0, result.stderr
    assert passwd_entry(sandbox, "alice") is None
    assert not (sandbox / "home/alice").exists()


def test_unmanaged_local_user_is_never_modified(sandbox: Path, run_agent) -> None:
    subprocess.run(["useradd", "--prefix", str(sandbox), "-m", "dave"], check=True)
    dave_keys = sandbox / "home/dave/.ssh/authorized_keys"
    dave_keys.parent.mkdir(mode=0o755)
    dave_keys.write_text(f"{MARK}\n{ED25519}\n")  # looks managed, but dave is not ours
    before = snapshot_tree(sandbox / "home/dave")
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
    assert snapshot_tree(sandbox / "home/dave") == before
    assert "dave" not in (group_members(sandbox, "google-sudoers") or set())


def test_symlinked_ssh_dir_is_refused_and_others_still_provisioned(sandbox: Path, run_agent) -> None:
    subprocess.run(["useradd", "--prefix", str(sandbox), "-m", "eve"], check=True)
    target = sandbox / "etc/important"
    target.mkdir()
    (sandbox / "home/eve/.ssh").symlink_to(target)
    with Simulator(scenario({"eve": [ED25519], "alice": [RSA]})) as sim:
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert "not writing keys for eve: ~/.ssh is a symlink" in result.stderr
    assert list(target.iterdir()) == []
    assert read(sandbox / "home/alice/.ssh/authorized_keys") == f"{MARK}\n{RSA}\n"


def test_bad_key_lines_are_logged_once_without_key_material(sandbox: Path, run_agent) -> None:
    bad = "mallory:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQ\nroot:" + ED25519 + "\n-x:" + RSA
    with Simulator(scenario({"alice": [ED25519]}, attributes={"ssh-keys": bad + "\nalice:" + ED25519})) as sim:
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0
    assert passwd_entry(sandbox, "alice") is not None
    for user in ("mallory", "root", "-x"):
        assert user == "root" or passwd_entry(sandbox, user) is None
    assert "line 1" in result.stderr and "system account" in result.stderr
    assert "AAAA" not in result.stderr


def test_plan_prints_actions_and_changes_nothing(sandbox: Path, run_agent) -> None:
    before = snapshot_tree(sandbox)
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        result = run_agent("plan", url=sim.url("gce"))
    assert result.returncode == 0
    assert "accounts: would create user alice in groups" in result.stdout
    assert "accounts: would write ~alice/.ssh/authorized_keys (1 managed keys)" in result.stdout
    assert snapshot_tree(sandbox) == before


def test_no_metadata_server_exits_2_with_a_clear_message(sandbox: Path, run_agent) -> None:
    result = run_agent("run", "--once", "--wait", "1", url="http://127.0.0.1:9/computeMetadata/v1/")
    assert result.returncode == 2
    assert "no gce metadata from http://127.0.0.1:9/computeMetadata/v1/" in result.stderr
    assert "unreachable" in result.stderr


@pytest.mark.parametrize(
    ("kind", "params", "reason"),
    [
        ("html", {}, "Metadata-Flavor"),
        ("status", {"status": 500}, "HTTP 500"),
        ("truncate", {}, "truncated"),
        ("flavor", {}, "Metadata-Flavor"),
        ("reset", {}, "unreachable"),
    ],
)
def test_bad_answers_are_refused_not_parsed(sandbox: Path, run_agent, kind: str, params: dict, reason: str) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        sim.add_fault("*", kind=kind, **params)
        result = run_agent("run", "--once", "--wait", "1", url=sim.url("gce"))
    assert result.returncode == 2
    assert reason in result.stderr
    assert passwd_entry(sandbox, "alice") is None


def test_one_process_per_new_user(sandbox: Path, tmp_path: Path) -> None:
    """With the default templates, each new user costs exactly one useradd (the reference agent: eight)."""
    import shutil
    import sys

    shims, log = tmp_path / "shims", tmp_path / "exec.log"
    shims.mkdir()
    for tool in ("useradd", "groupadd", "usermod", "userdel", "gpasswd", "visudo"):
        real = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if real:
            (shims / tool).write_text(f'#!/bin/sh\necho {tool} >> "{log}"\nexec {real} "$@"\n')
            (shims / tool).chmod(0o755)
    users = {f"user{i}": [ED25519] for i in range(10)}
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    with Simulator(scenario(users)) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "guestagent", "run", "--once", "--root", str(sandbox), "--metadata-url", sim.url("gce")],
            capture_output=True, text=True, env=env, check=False,
        )
    assert done.returncode == 0, done.stderr
    checks = ["visudo"] if shutil.which("visudo", path="/usr/sbin:/usr/bin") else []
    assert log.read_text().split() == ["groupadd", *checks, *["useradd"] * 10]
