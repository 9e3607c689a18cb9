"""sshd_config edits for Azure provisioning: global keywords before the first Match, every other
byte kept (WALinuxAgent #52/#544: a PasswordAuthentication appended inside a Match block stopped
sshd from starting)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.sshd_config import (
    ADDED_COMMENT,
    effective_global,
    global_end,
    provisioning_settings,
    set_global,
)

DEBIAN = """\
# This is the sshd server system-wide configuration file.

Include /etc/ssh/sshd_config.d/*.conf

#PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server

# Example of overriding settings on a per-user basis
Match User anoncvs
\tX11Forwarding no
\tPasswordAuthentication yes
"""


def test_lands_before_include_and_before_match() -> None:
    out = set_global(DEBIAN, [("PasswordAuthentication", "no")])
    lines = out.splitlines()
    ours = lines.index("PasswordAuthentication no")
    assert lines[ours - 1] == ADDED_COMMENT
    assert ours < lines.index("Include /etc/ssh/sshd_config.d/*.conf") < lines.index("Match User anoncvs")
    # Nothing else changed: take our two lines out and the original is back.
    assert (
        "\n".join(line for line in lines if line not in (ADDED_COMMENT, "PasswordAuthentication no")) + "\n"
        == DEBIAN
    )
    assert effective_global(out, "passwordauthentication") == "no"


def test_without_include_the_line_goes_before_the_match_and_its_comment() -> None:
    text = "UsePAM yes\n\n# per-user\nMatch User backup\n\tPasswordAuthentication yes\n"
    out = set_global(text, [("PasswordAuthentication", "no")])
    assert out == (
        f"UsePAM yes\n{ADDED_COMMENT}\nPasswordAuthentication no\n\n# per-user\nMatch User backup\n"
        "\tPasswordAuthentication yes\n"
    )
    assert global_end(out.splitlines()) == out.splitlines().index("Match User backup")


def test_an_existing_global_line_is_changed_in_place() -> None:
    text = "  passwordauthentication=yes  # old\nUsePAM yes\nMatch all\n"
    assert set_global(text, [("PasswordAuthentication", "no")]) == (
        "  PasswordAuthentication no\nUsePAM yes\nMatch all\n"
    )


def test_a_line_after_an_include_is_not_trusted() -> None:
    # Include'd files are read first and would win: our line goes above the Include.
    text = "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n"
    out = set_global(text, [("PasswordAuthentication", "no")])
    assert out.splitlines()[1:3] == ["PasswordAuthentication no", "Include /etc/ssh/sshd_config.d/*.conf"]


def test_unchanged_when_already_right_and_idempotent() -> None:
    settings_ = provisioning_settings(True, 180)
    once = set_global(DEBIAN, settings_)
    assert set_global(once, settings_) == once
    assert set_global("PasswordAuthentication no\n", [("PasswordAuthentication", "no")]) == (
        "PasswordAuthentication no\n"
    )


def test_no_final_newline_and_empty_files() -> None:
    assert set_global("UsePAM yes", [("ClientAliveInterval", "180")]) == (
        f"UsePAM yes\n{ADDED_COMMENT}\nClientAliveInterval 180\n"
    )
    assert (
        set_global("", [("PasswordAuthentication", "no")]) == f"{ADDED_COMMENT}\nPasswordAuthentication no\n"
    )


def test_provisioning_settings() -> None:
    assert provisioning_settings(True, 180) == [
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("ClientAliveInterval", "180"),
    ]
    assert provisioning_settings(False, 0) == [("PasswordAuthentication", "yes")]


LINES = st.sampled_from(
    [
        "UsePAM yes",
        "# comment",
        "",
        "Include /etc/ssh/sshd_config.d/*.conf",
        "PasswordAuthentication yes",
        "passwordauthentication no",
        "Match User x",
        "\tPasswordAuthentication yes",
        "Match all",
        "X11Forwarding no",
        "  ClientAliveInterval=30",
        "Subsystem sftp internal-sftp",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, max_size=15), st.booleans(), st.booleans())
def test_every_match_block_is_kept_and_the_global_value_wins(
    lines: list[str], newline: bool, disable: bool
) -> None:
    text = "\n".join(lines) + ("\n" if newline and lines else "")
    out = set_global(text, provisioning_settings(disable, 180))
    before, after = text.splitlines(), out.splitlines()
    # Everything from the first Match on is byte for byte the same.
    assert after[global_end(after) :] == before[global_end(before) :]
    assert effective_global(out, "PasswordAuthentication") == ("no" if disable else "yes")
    assert effective_global(out, "ClientAliveInterval") == "180"
    assert set_global(out, provisioning_settings(disable, 180)) == out
