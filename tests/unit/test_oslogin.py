"""OS Login: the file edits (pure) and the subsystem against a sandbox root and a recording runner."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.domain import oslogin
from guestagent.domain.config import Config, OSLogin
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.oslogin import OsLoginSubsystem
from tests.fakes import FixedClock, RecordingRunner
from tests.gce_metadata import gce_md

DEBIAN_SSHD = """\
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""
DEBIAN_NSSWITCH = """\
# /etc/nsswitch.conf
passwd:         files systemd
group:          files systemd
shadow:         files
hosts:          files dns
"""
DEBIAN_PAM = """\
@include common-auth
account    required     pam_nologin.so
@include common-account
session [success=ok ignore=ignore module_unknown=ignore default=bad] pam_selinux.so close
@include common-session
"""
GROUP_CONF = "# group.conf\n#xsh; tty* ;%admin;Al0000-2400;plugdev\n"
ORIGINALS = dict(
    zip(oslogin.FILES, [DEBIAN_SSHD, DEBIAN_NSSWITCH, DEBIAN_PAM, GROUP_CONF], strict=True)
)

# Lines like the ones real config files hold, plus awkward ones.
_line = st.one_of(
    st.sampled_from(
        [
            "passwd: files",
            "group:\tcompat # local",
            "passwd: files oslogin",
            "#### saved original: passwd: x",
            oslogin.NO_FINAL_NEWLINE,
            "",
            "   ",
            "Match User bob",
            "\r",
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30),
)
config_texts = st.lists(_line, max_size=12).flatmap(
    lambda lines: st.sampled_from(["\n".join(lines), "\n".join(lines) + "\n"])
)

WANTS = [
    oslogin.OsLoginDesired(enabled=True),
    oslogin.OsLoginDesired(enabled=True, cert_authentication=True),
]


@pytest.mark.parametrize("path", oslogin.FILES)
@given(text=config_texts)
def test_enable_then_disable_restores_any_file_byte_for_byte(path: str, text: str) -> None:
    assume(oslogin.BLOCK_START not in text and oslogin.BLOCK_END not in text)
    for want in WANTS:
        enabled = oslogin.render(path, text, want)
        assert oslogin.render(path, enabled, oslogin.OsLoginDesired(enabled=False)) == text


@pytest.mark.parametrize("path", oslogin.FILES)
@given(text=config_texts)
def test_enabling_twice_changes_nothing_the_second_time(path: str, text: str) -> None:
    assume(oslogin.BLOCK_START not in text and oslogin.BLOCK_END not in text)
    for want in WANTS:
        once = oslogin.render(path, text, want)
        assert oslogin.render(path, once, want) == once


def test_sshd_block_comes_first_so_its_values_win() -> None:
    text = oslogin.sshd_config(DEBIAN_SSHD, enabled=True, cert_authentication=False)
    assert text.splitlines()[:4] == [
        oslogin.BLOCK_START,
        "AuthorizedKeysCommand /usr/bin/google_authorized_keys",
        "AuthorizedKeysCommandUser root",
        oslogin.BLOCK_END,
    ]
    assert text.endswith(DEBIAN_SSHD)


def test_cert_authentication_adds_trusted_ca_and_principals() -> None:
    text = oslogin.sshd_config(DEBIAN_SSHD, enabled=True, cert_authentication=True)
    assert "TrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub\n" in text
    assert "AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k\n" in text
    without = oslogin.sshd_config(DEBIAN_SSHD, enabled=True, cert_authentication=False)
    assert "TrustedUserCAKeys" not in without
    # switching the option off rewrites the block, it does not stack a second one
    again = oslogin.sshd_config(text, enabled=True, cert_authentication=False)
    assert again == without


def test_nsswitch_gets_oslogin_on_passwd_and_group_only() -> None:
    text = oslogin.nsswitch(DEBIAN_NSSWITCH, enabled=True)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert active == [
        "passwd:         files systemd cache_oslogin oslogin",
        "group:          files systemd cache_oslogin oslogin",
        "shadow:         files",
        "hosts:          files dns",
    ]


def test_nsswitch_sources_go_before_a_trailing_comment() -> None:
    text = oslogin.nsswitch("passwd: files  # local users\n", enabled=True)
    assert "passwd: files cache_oslogin oslogin  # local users" in text.splitlines()


def test_nsswitch_line_someone_else_set_up_is_left_alone() -> None:
    original = "passwd: files oslogin\ngroup: files\n"
    text = oslogin.nsswitch(original, enabled=True)
    assert "passwd: files oslogin" in text.splitlines()
    assert "group: files cache_oslogin oslogin" in text.splitlines()
    assert oslogin.nsswitch(text, enabled=False) == original


def test_pam_group_first_and_mkhomedir_last() -> None:
    text = oslogin.pam_sshd(DEBIAN_PAM, enabled=True)
    lines = text.splitlines()
    assert lines[1] == oslogin.PAM_AUTH_LINE
    assert lines[-2] == oslogin.PAM_SESSION_LINE
    assert lines[-1] == oslogin.BLOCK_END


def test_group_conf_gets_video_rule_for_sshd() -> None:
    text = oslogin.group_conf(GROUP_CONF, enabled=True)
    assert text.startswith(GROUP_CONF)
    assert "sshd;*;*;Al0000-2400;video\n" in text


def test_file_without_final_newline_is_restored_without_one() -> None:
    original = "session required pam_env.so"
    enabled = oslogin.pam_sshd(original, enabled=True)
    assert enabled.endswith("\n")
    assert oslogin.pam_sshd(enabled, enabled=False) == original


def test_a_half_deleted_block_keeps_the_rest_of_the_file() -> None:
    text = f"{oslogin.BLOCK_START}\nAuthorizedKeysCommand /x\nPort 22\n"
    assert oslogin.remove_blocks(text) == text


def test_plan_is_empty_when_files_already_match() -> None:
    want = oslogin.OsLoginDesired(enabled=True)
    files = {
        p: oslogin.ConfigFile(oslogin.render(p, t, want))
        for p, t in ORIGINALS.items()
    }
    assert oslogin.plan(want, oslogin.OsLoginCurrent(files)).actions == ()


def test_plan_never_touches_a_guest_that_never_had_os_login() -> None:
    files = {
        p: oslogin.ConfigFile(t)
        for p, t in ORIGINALS.items()
    }
    off = oslogin.OsLoginDesired(enabled=False)
    assert oslogin.plan(off, oslogin.OsLoginCurrent(files)).actions == ()


def test_plan_keeps_mode_and_owner_and_notes_missing_files() -> None:
    files = {oslogin.SSHD_CONFIG: oslogin.ConfigFile(DEBIAN_SSHD, mode=0o600, uid=0, gid=4)}
    planned = oslogin.plan(oslogin.OsLoginDesired(enabled=True), oslogin.OsLoginCurrent(files))
    edit, restart = planned.actions
    assert isinstance(edit, oslogin.EditFile)
    assert (edit.path, edit.mode, edit.gid) == (oslogin.SSHD_CONFIG, 0o600, 4)
    assert restart == oslogin.RestartServices(reload_sshd=True)
    assert len(planned.notes) == 3


def test_service_commands_only_for_units_that_exist() -> None:
    show = "Id=nscd.service\nLoadState=not-found\n\nId=cron.service\nLoadState=loaded\n\n" \
        "Id=ssh.service\nLoadState=loaded\n\nId=ssh.service\nLoadState=loaded\n"
    loaded = oslogin.loaded_units(show)
    assert oslogin.service_commands(oslogin.RestartServices(reload_sshd=True), loaded) == (
        ("systemctl", "--no-block", "try-restart", "cron.service"),
        ("systemctl", "--no-block", "reload-or-restart", "ssh.service"),
    )
    assert oslogin.service_commands(oslogin.RestartServices(reload_sshd=False), loaded) == (
        ("systemctl", "--no-block", "try-restart", "cron.service"),
    )


# ---- the subsystem, on a sandbox directory, with a runner that records instead of running


def _runner(answers: Mapping[str, CommandResult] | None = None) -> RecordingRunner:
    """Programs live in /usr/sbin; `systemctl show` finds every unit loaded but sshd.service;
    `answers` gives a program (by name) its own result, everything else succeeds."""

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        name = argv[0].rsplit("/", 1)[-1]
        if name == "systemctl" and argv[1] == "show":
            units = [a for a in argv[2:] if a.endswith(".service")]
            text = "\n\n".join(f"Id={u}\nLoadState=loaded" for u in units if u != "sshd.service")
            return CommandResult(argv, 0, text + "\n", "")
        return (answers or {}).get(name)

    return RecordingRunner(respond=respond, which=lambda program: f"/usr/sbin/{program}")


def _sandbox(tmp_path: Path) -> LocalFileSystem:
    for path, text in ORIGINALS.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return LocalFileSystem(str(tmp_path))


def _ctx(fs: LocalFileSystem, runner: RecordingRunner, root: str, cert: bool = False) -> Context:
    return Context(
        config=Config(OSLogin=OSLogin(cert_authentication=cert)),
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=FixedClock(),
        root=root,
    )


def _meta(enabled: bool) -> InstanceMetadata:
    return gce_md("1", oslogin_enabled=enabled)


def _texts(tmp_path: Path) -> list[str]:
    return [(tmp_path / p.lstrip("/")).read_text() for p in oslogin.FILES]


def test_enable_checks_sshd_config_then_reloads_sshd_and_caches_once(tmp_path: Path) -> None:
    fs = _sandbox(tmp_path)
    runner = _runner()
    # root "/" as far as the subsystem knows: the runner is the only thing that "restarts"
    outcome = OsLoginSubsystem().reconcile(_ctx(fs, runner, "/"), _meta(True))
    assert outcome.ok, outcome.failures
    assert runner.calls[0][:3] == ("/usr/sbin/sshd", "-t", "-f")
    assert "try-restart" not in runner.calls[0]
    restarts = [c for c in runner.calls if c[0] == "systemctl" and c[1] != "show"]
    assert restarts == [
        ("systemctl", "--no-block", "try-restart", "nscd.service"),
        ("systemctl", "--no-block", "try-restart", "unscd.service"),
        ("systemctl", "--no-block", "try-restart", "systemd-logind.service"),
        ("systemctl", "--no-block", "try-restart", "cron.service"),
        ("systemctl", "--no-block", "try-restart", "crond.service"),
        ("systemctl", "--no-block", "reload-or-restart", "ssh.service"),
    ]
    assert "AuthorizedKeysCommand /usr/bin/google_authorized_keys" in _texts(tmp_path)[0]

    runner.calls.clear()
    again = OsLoginSubsystem().reconcile(_ctx(fs, runner, "/"), _meta(True))
    assert again.actions == ()
    assert runner.calls == []  # nothing changed: no rewrite, no reload


def test_disable_restores_originals_and_sandbox_root_restarts_nothing(tmp_path: Path) -> None:
    fs = _sandbox(tmp_path)
    before = _texts(tmp_path)
    runner = _runner()
    subsystem = OsLoginSubsystem()
    subsystem.reconcile(_ctx(fs, runner, str(tmp_path), cert=True), _meta(True))
    assert _texts(tmp_path) != before
    outcome = subsystem.reconcile(_ctx(fs, runner, str(tmp_path), cert=True), _meta(False))
    assert outcome.ok
    assert _texts(tmp_path) == before
    assert not [c for c in runner.calls if c[0] == "systemctl"]


def test_sshd_config_rejected_by_sshd_t_is_not_written_and_sshd_not_reloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs = _sandbox(tmp_path)
    bad = CommandResult(("sshd",), 255, "", "line 2: Bad configuration option: Foo\n")
    runner = _runner({"sshd": bad})
    with caplog.at_level(logging.ERROR):
        outcome = OsLoginSubsystem().reconcile(_ctx(fs, runner, "/"), _meta(True))
    assert not outcome.ok
    assert "sshd -t rejected" in outcome.failures[0]
    assert _texts(tmp_path)[0] == DEBIAN_SSHD
    assert list((tmp_path / "etc/ssh").iterdir()) == [tmp_path / "etc/ssh/sshd_config"]
    # the other files still changed, so caches restart, but sshd keeps its old config
    restarts = [c for c in runner.calls if c[0] == "systemctl" and c[1] != "show"]
    assert ("systemctl", "--no-block", "reload-or-restart", "ssh.service") not in restarts
    assert ("systemctl", "--no-block", "try-restart", "nscd.service") in restarts


def test_missing_privsep_dir_alone_counts_as_a_passing_check(tmp_path: Path) -> None:
    fs = _sandbox(tmp_path)
    privsep = CommandResult(("sshd",), 255, "", "Missing privilege separation directory: /run/sshd\n")
    outcome = OsLoginSubsystem().reconcile(
        _ctx(fs, _runner({"sshd": privsep}), str(tmp_path)), _meta(True)
    )
    assert outcome.ok
    assert oslogin.BLOCK_START in _texts(tmp_path)[0]


def test_dry_run_describes_and_writes_nothing(tmp_path: Path) -> None:
    fs = _sandbox(tmp_path)
    before = _texts(tmp_path)
    runner = _runner()
    ctx = _ctx(fs, runner, "/")
    outcome = OsLoginSubsystem().reconcile(attrs.evolve(ctx, dry_run=True), _meta(True))
    assert "add OS Login settings to /etc/ssh/sshd_config" in outcome.actions
    assert _texts(tmp_path) == before
    assert runner.calls == []
