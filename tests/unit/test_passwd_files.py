"""The passwd/group view: every call shows the files as they are now, whatever it kept
from the last read, and what a caller does with its answer stays with the caller."""

from __future__ import annotations

from pathlib import Path

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles

ALICE = "alice:x:1001:1001::/home/alice:/bin/bash\n"
BOB = "bob:x:1002:1002::/home/bob:/bin/bash\n"


def view(tmp_path: Path) -> PasswdFiles:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(ALICE)
    (tmp_path / "etc/group").write_text("sudo:x:27:alice\n")
    return PasswdFiles(LocalFileSystem(str(tmp_path)))


def test_a_change_between_two_reads_is_seen(tmp_path: Path) -> None:
    users = view(tmp_path)
    assert list(users.users()) == ["alice"]
    # Same length, same second: only the text tells them apart.
    (tmp_path / "etc/passwd").write_text(ALICE.replace("alice", "carol"))
    assert list(users.users()) == ["carol"]
    (tmp_path / "etc/passwd").write_text(ALICE + BOB)
    assert list(users.users()) == ["alice", "bob"]
    (tmp_path / "etc/group").write_text("sudo:x:27:alice,bob\n")
    assert users.groups() == {"sudo": frozenset({"alice", "bob"})}
    (tmp_path / "etc/login.defs").write_text("UID_MIN 2000\n")
    assert users.uid_min() == 2000
    (tmp_path / "etc/login.defs").unlink()
    assert users.uid_min() == 1000


def test_what_a_caller_does_with_its_answer_stays_with_it(tmp_path: Path) -> None:
    users = view(tmp_path)
    mine = users.users()
    mine.pop("alice")
    groups = users.groups()
    groups["wheel"] = frozenset()
    assert list(users.users()) == ["alice"]
    assert list(users.groups()) == ["sudo"]
