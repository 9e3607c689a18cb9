"""SIGKILL at 100 random (seeded) points of a 200-user pass, checking every file after each.

First a full provision of 200 users (GCE names, one key each), not killed. Then a change
that touches 100 of them: 96 get another key (their authorized_keys rewritten) and 4
leave metadata (keys and sudo membership removed, the record shrinks, `usermod` rewrites
group and gshadow). The pass is killed again and again; the target flips between the
change and its undo after every kill, so each kill lands in a pass with work left to do.

After EACH kill, read in-process: every authorized_keys, the managed-users record, passwd,
shadow, group and gshadow must be whole (old or new content, never empty or torn: they are
parsed), and a final uninterrupted run converges (and the one after it does nothing).

Cost: an agent process is forked from a "zygote" that has already imported the agent
(python start-up would cost ~0.5 s a kill and would not be the interesting part of the
pass); each forked child runs the real CLI (`guestagent run --once --root ...`) in its own
process group, and the kill is SIGKILL to that group, as systemd kills a unit's cgroup:
a useradd or usermod it started dies with it. Kill points are uniform over the length of
an uninterrupted pass, measured first.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.integration.conftest import scenario
from tests.reliability.conftest import (
    BY_NAME,
    Zygote,
    ed25519,
    managed_keys,
    parse_group,
    parse_passwd,
    parse_record,
    read,
    url_of,
    write_config,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

CASE = BY_NAME["gce"]  # named users: every kill can tear one of 200 files, not one
USERS = [f"cc{i:03d}" for i in range(200)]
CHANGED = [u for i, u in enumerate(USERS) if i % 2 == 0 and i < 192]  # 96 get a second key
LEAVING = [u for i, u in enumerate(USERS) if i % 2 == 0 and i >= 192]  # 4 leave metadata
KILLS = 100
SEED = 20240611


def metadata(changed: bool) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for user in USERS:
        if changed and user in LEAVING:
            continue
        keys = [ed25519(f"{user}-a")]
        if changed and user in CHANGED:
            keys.append(ed25519(f"{user}-b"))
        users[user] = keys
    return users


def keys_path(root: Path, home: str) -> Path:
    return root / home.lstrip("/") / ".ssh/authorized_keys"


def capture(root: Path) -> dict[str, object]:
    """What a converged pass left: each user's keys file, the record, sudo members."""
    passwd = parse_passwd((root / "etc/passwd").read_text())
    return {
        "keys": {u: read(keys_path(root, passwd[u][5])) for u in USERS},
        "record": parse_record(read(root / CASE.record)),
        "sudo": parse_group((root / "etc/group").read_text())[CASE.sudo_group],
        "uids": {u: passwd[u][2] for u in USERS},
    }


def check_whole(root: Path, states: list[dict[str, object]], groups: set[str]) -> None:
    """Every file one of the states a pass goes between, parsed (raises on a torn one)."""
    passwd = parse_passwd((root / "etc/passwd").read_text())
    uids = states[0]["uids"]
    assert {u: passwd[u][2] for u in USERS if u in passwd} == uids, "passwd lost or renumbered a user"
    group = parse_group((root / "etc/group").read_text())
    assert set(group) == groups, f"groups changed: {sorted(set(group) ^ groups)}"
    sudo = group[CASE.sudo_group]
    always = set(USERS) - set(LEAVING)
    assert always <= sudo <= set(USERS), "sudo group members outside what either state has"
    for name, fields in (("shadow", 9), ("gshadow", 4)):
        text = (root / "etc" / name).read_text()
        assert text.endswith("\n"), f"{name} torn"
        assert all(len(line.split(":")) == fields for line in text.splitlines()), f"{name} torn"
    record = parse_record(read(root / CASE.record))
    assert record in [s["record"] for s in states], f"record is neither state: {len(record)} names"
    for user in USERS:
        text = read(keys_path(root, passwd[user][5]))
        allowed = {s["keys"][user] for s in states}  # type: ignore[index]
        if text not in allowed:
            managed_keys(text, CASE.marker)  # a torn file says so here
            raise AssertionError(f"{user}'s authorized_keys is neither the old nor the new one")


def test_sigkill_at_random_points_of_a_200_user_pass(sandbox: Path, zygote: Zygote, tmp_path: Path) -> None:
    root = sandbox
    write_config(root, CASE)
    rng = random.Random(SEED)
    sim = CASE.start(scenario(metadata(False)))
    try:
        argv = [
            "run",
            "--once",
            "--root",
            str(root),
            "--metadata-url",
            url_of(CASE, sim),
            "--platform",
            CASE.name,
        ]

        def run(log: Path) -> tuple[int, float]:
            started = time.monotonic()
            pid = zygote.start(argv, log)
            return zygote.wait(pid, log), time.monotonic() - started

        # The full provision, then the change and its undo once each: the states every file
        # must be in after a kill, and how long an uninterrupted change pass takes.
        code, _ = run(tmp_path / "provision.log")
        assert code == 0, read(tmp_path / "provision.log")
        state_a = capture(root)
        groups = set(parse_group((root / "etc/group").read_text()))
        durations = []
        for target, name in ((True, "b"), (False, "a")):
            CASE.apply(sim, scenario(metadata(target)))
            code, took = run(tmp_path / f"calibrate-{name}.log")
            assert code == 0, read(tmp_path / f"calibrate-{name}.log")
            durations.append(took)
            if target:
                state_b = capture(root)
        assert capture(root) == state_a, "the undo of the change did not restore the first state"
        assert state_b["record"] == sorted(set(USERS) - set(LEAVING))
        states = [state_a, state_b]
        # A kill every 0.1 to 1 s: a loaded machine's slower pass is sampled, not waited out.
        pass_time = min(max(durations), 1.0)

        loop_started = time.monotonic()
        target = False
        mid_pass = 0
        problems: list[str] = []
        for kill in range(KILLS):
            target = not target
            CASE.apply(sim, scenario(metadata(target)))
            pid = zygote.start(argv, tmp_path / "killed.log")
            time.sleep(rng.uniform(0.0, pass_time))
            zygote.kill_group(pid)
            try:
                check_whole(root, states, groups)
            except AssertionError as exc:
                problems.append(f"kill {kill}: {exc}")
                if len(problems) > 5:
                    break
                continue
            if _mixed(root, states):
                mid_pass += 1
        loop_took = time.monotonic() - loop_started
        assert not problems, "\n".join(problems)
        # Not a timing promise, a check that the kills were not all before or after the writes.
        assert mid_pass >= 5, f"only {mid_pass} of {KILLS} kills landed between two key-file writes"

        code, _ = run(tmp_path / "final.log")
        final_log = (read(tmp_path / "final.log") or "") + (read(tmp_path / "final.log.out") or "")
        assert code == 0, final_log[-3000:]
        assert "Traceback" not in final_log
        assert capture(root) == (state_b if target else state_a), "the restart did not converge"
        code, _ = run(tmp_path / "again.log")
        again = read(tmp_path / "again.log.out") or ""
        assert code == 0 and "accounts: nothing to do" in again, again[-3000:]
        leftovers = [str(p) for p in root.rglob("*.tmp") if p.name.startswith(".")]
        assert leftovers == [], leftovers
        locks = [str(p) for p in (root / "etc").glob("*.lock")]
        assert locks == [], f"lock files left behind: {locks}"
    finally:
        sim.stop()
    print(
        f"crash consistency: pass {pass_time:.2f}s, {KILLS} kills in {loop_took:.1f}s, "
        f"{mid_pass} between two key-file writes"
    )


def _mixed(root: Path, states: list[dict[str, object]]) -> bool:
    """Some changed users' files in one state and some in the other: killed mid-pass."""
    passwd = parse_passwd((root / "etc/passwd").read_text())
    seen = set()
    for user in CHANGED:
        text = read(keys_path(root, passwd[user][5]))
        seen.add(next(i for i, s in enumerate(states) if s["keys"][user] == text))  # type: ignore[index]
    return len(seen) > 1
