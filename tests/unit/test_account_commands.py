from __future__ import annotations

import pytest

from guestagent.domain.account_commands import UnconfinedCommand, commands_for
from guestagent.domain.accounts import (
    AddToGroup,
    CreateGroup,
    CreateUser,
    DeleteUser,
    RemoveFromGroup,
    WriteKeys,
)
from guestagent.domain.config import Accounts


def test_new_user_is_one_process_with_default_templates() -> None:
    cmds = commands_for(CreateUser("alice", ("adm", "google-sudoers")), Accounts())
    assert cmds == [["useradd", "-m", "-s", "/bin/bash", "-p", "*", "-G", "adm,google-sudoers", "alice"]]


def test_custom_useradd_then_one_usermod_for_the_groups() -> None:
    config = Accounts(useradd_cmd="/usr/local/bin/mkuser --name {user}")
    cmds = commands_for(CreateUser("alice", ("adm", "google-sudoers")), config)
    assert cmds == [
        ["/usr/local/bin/mkuser", "--name", "alice"],
        ["usermod", "-G", "adm,google-sudoers", "alice"],
    ]


def test_templates_substitute_inside_words_only() -> None:
    config = Accounts(gpasswd_add_cmd="gpasswd -a {user} {group}")
    assert commands_for(AddToGroup("a.b", "google-sudoers"), config) == [
        ["gpasswd", "-a", "a.b", "google-sudoers"]
    ]
    assert commands_for(RemoveFromGroup("a", "g"), Accounts()) == [["gpasswd", "-d", "a", "g"]]
    assert commands_for(DeleteUser("a"), Accounts()) == [["userdel", "-r", "a"]]
    assert commands_for(CreateGroup("g"), Accounts()) == [["groupadd", "g"]]
    assert commands_for(WriteKeys("a", "", 0), Accounts()) == []


def test_sandbox_root_confines_shadow_utils_with_prefix() -> None:
    root = "/tmp/sandbox"
    assert commands_for(CreateUser("alice", ("g",)), Accounts(), root) == [
        ["useradd", "--prefix", root, "-m", "-s", "/bin/bash", "-p", "*", "-G", "g", "alice"]
    ]
    # gpasswd has no --prefix: usermod does the same job inside the sandbox
    assert commands_for(AddToGroup("alice", "g"), Accounts(), root) == [
        ["usermod", "--prefix", root, "-a", "-G", "g", "alice"]
    ]
    assert commands_for(RemoveFromGroup("alice", "g"), Accounts(), root) == [
        ["usermod", "--prefix", root, "-r", "-G", "g", "alice"]
    ]
    assert commands_for(DeleteUser("alice"), Accounts(), root) == [
        ["userdel", "--prefix", root, "-r", "alice"]
    ]


def test_custom_programs_are_refused_under_a_sandbox_root() -> None:
    with pytest.raises(UnconfinedCommand):
        commands_for(CreateUser("a", ()), Accounts(useradd_cmd="/opt/mkuser {user}"), "/tmp/sb")
