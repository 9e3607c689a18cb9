"""Account actions into argv lists, from the config's command templates.

Templates are split once into words and `{user}`, `{group}`, `{groups}` are
substituted inside words, so a username can never become a second argument
or a shell construct. With the default templates a new user costs one
process (`useradd ... -G g1,g2 user`); the reference agent spent eight.

Under a sandbox root, shadow-utils run with `--prefix ROOT`; gpasswd has no
such option, so group changes go through `usermod -a/-r -G` there. A custom
program cannot be confined that way and is refused rather than allowed to
touch the real /etc.
"""

from __future__ import annotations

import os
import shlex

from guestagent.domain.accounts import (
    Action,
    AddToGroup,
    CreateGroup,
    CreateUser,
    DeleteUser,
    RemoveFromGroup,
)
from guestagent.domain.config import Accounts as AccountsConfig

_DEFAULTS = AccountsConfig()
_PREFIX_AWARE = frozenset({"useradd", "groupadd", "usermod", "userdel"})


class UnconfinedCommand(ValueError):
    """A custom command template cannot be kept inside the sandbox root."""


def _fill(template: str, **values: str) -> list[str]:
    words = shlex.split(template)
    out = []
    for word in words:
        for key, value in values.items():
            word = word.replace("{" + key + "}", value)
        out.append(word)
    return out


def _confine(argv: list[str], root: str) -> list[str]:
    if root == "/":
        return argv
    program = os.path.basename(argv[0])
    if program not in _PREFIX_AWARE:
        raise UnconfinedCommand(f"{program} cannot run under a sandbox root (no --prefix)")
    return [argv[0], "--prefix", root, *argv[1:]]


def _group_change(config: AccountsConfig, user: str, group: str, add: bool, root: str) -> list[str]:
    template = config.gpasswd_add_cmd if add else config.gpasswd_remove_cmd
    default = _DEFAULTS.gpasswd_add_cmd if add else _DEFAULTS.gpasswd_remove_cmd
    if root != "/" and template == default:
        return _confine(["usermod", "-a" if add else "-r", "-G", group, user], root)
    return _confine(_fill(template, user=user, group=group), root)


def _create_user(action: CreateUser, config: AccountsConfig, root: str) -> list[list[str]]:
    groups = ",".join(action.groups)
    if config.useradd_cmd == _DEFAULTS.useradd_cmd:
        argv = _fill(config.useradd_cmd, user=action.user)
        # The user name is the template's last word; groups go just before it.
        return [_confine([*argv[:-1], "-G", groups, argv[-1]], root)]
    commands = [_confine(_fill(config.useradd_cmd, user=action.user), root)]
    if action.groups:
        commands.append(_confine(_fill(config.usermod_cmd, user=action.user, groups=groups), root))
    return commands


def commands_for(action: Action, config: AccountsConfig, root: str = "/") -> list[list[str]]:
    """The argv lists that carry out `action`; empty for file actions."""
    match action:
        case CreateGroup(group=group):
            return [_confine(_fill(config.groupadd_cmd, group=group), root)]
        case CreateUser():
            return _create_user(action, config, root)
        case AddToGroup(user=user, group=group):
            return [_group_change(config, user, group, True, root)]
        case RemoveFromGroup(user=user, group=group):
            return [_group_change(config, user, group, False, root)]
        case DeleteUser(user=user):
            return [_confine(_fill(config.userdel_cmd, user=user), root)]
        case _:
            return []
