"""Redaction for collect-logs: no key body and no secret value survives; settings and
names do; files named like private keys are never read; tarball names are safe."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guestagent.domain import redact
from tests.keys import ECDSA, ED25519, RSA

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "rsa-sha2-512",  # not a key type of its own, but its blob is still a blob
)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@st.composite
def key_bodies(draw: st.DrawFn) -> tuple[str, str]:
    """(type, base64 body) in SSH wire format, with a random key of a plausible size."""
    key_type = draw(st.sampled_from(KEY_TYPES))
    size = draw(st.sampled_from([32, 65, 97, 133, 256, 384, 512]))
    material = draw(st.binary(min_size=size, max_size=size))
    blob = _string(key_type.encode()) + _string(material)
    return key_type, base64.b64encode(blob).decode()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
LAYOUTS = (
    "{t} {b} {c}",  # an authorized_keys line
    'no-pty,from="10.0.0.0/8" {t} {b} {c}',  # with options
    "alice:{t} {b} {c}",  # GCE ssh-keys
    'alice:{t} {b} google-ssh {{"userName":"a@example.com","expireOn":"2030-01-01T00:00:00+0000"}}',
    '{{"ssh-keys": "alice:{t} {b}\\nbob:{t} {b}"}}',  # JSON, as metadata is
    "ssh-keys = {t} {b}",  # INI
    "<PublicKey><Value>{t} {b}</Value></PublicKey>",  # XML
    "hostkeys/{t}={b}",  # a guest attribute value, bare
    "{b}",  # only the body
    "{c}{b}{c}",  # glued to whatever is around it
)


@given(key=key_bodies(), layout=st.sampled_from(LAYOUTS), comment=_text, before=_text, after=_text)
@example(key=("ssh-ed25519", ED25519.split()[1]), layout=LAYOUTS[0], comment="x", before="", after="")
def test_no_generated_key_body_survives(
    key: tuple[str, str], layout: str, comment: str, before: str, after: str
) -> None:
    key_type, body = key
    text = before + layout.format(t=key_type, b=body, c=comment) + after
    out = redact.redact(text)
    assert body not in out
    # Not a near miss either: no long run of the body is left.
    assert body[4:44] not in out


@pytest.mark.parametrize("line", [ED25519, ECDSA, RSA])
def test_real_keys_keep_type_and_comment(line: str) -> None:
    key_type, _, comment = line.split()
    assert redact.redact(line) == f"{key_type} {redact.REDACTED_KEY} {comment}"


@pytest.mark.parametrize(
    "block",
    [
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n",  # cut short: redacted to the end
    ],
)
def test_pem_private_keys_are_removed(block: str) -> None:
    out = redact.redact(f"before\n{block}\nafter")
    assert "MII" not in out and "b3Bl" not in out
    assert out.startswith("before\n") and redact.REDACTED_PRIVATE_KEY in out
    assert redact.holds_private_key(block)


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("[Accounts]\nuser_password = hunter2 two words\n", "user_password = ", "hunter2"),
        ("HttpProxy.Password=s3cret\nProvisioning.DeleteRootPassword=n\n", "DeleteRootPassword=n", "s3cret"),
        ('{"UserPassword": "s3cret", "name": "vm1", "enabled": true}', '"name": "vm1"', "s3cret"),
        ('{"token":"AQAEAFtoken", "ttl": 21600}', '"ttl": 21600', "AQAEAFtoken"),
        ("<UserName>azureuser</UserName><UserPassword>s3cret</UserPassword>", "azureuser", "s3cret"),
        ("<ns1:UserPassword>s3cret</ns1:UserPassword>", "ns1:UserPassword", "s3cret"),
        ("<CustomData>IyEvYmluL3NoCmVjaG8gaGk=</CustomData>", "<CustomData>", "IyEvYmluL3No"),
        ('<Credential password="s3cret" user="bob"/>', 'user="bob"', "s3cret"),
        ("2026-01-01 guestagent INFO x-aws-ec2-metadata-token: AQAEAFtoken==\n", "INFO", "AQAEAFtoken"),
        ("GET /latest/api?token=abc123&x=1 HTTP/1.1", "x=1", "abc123"),
        ("proxy http://bob:s3cret@proxy.example:3128/", "bob:", "s3cret"),
        ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI\n", "AWS_SECRET_ACCESS_KEY=", "wJalrXUtnFEMI"),
    ],
)
def test_secret_values_go_names_and_settings_stay(text: str, kept: str, gone: str) -> None:
    out = redact.redact(text)
    assert gone not in out
    assert kept in out
    assert redact.REDACTED in out


def test_ordinary_config_and_state_pass_unchanged() -> None:
    text = (
        "[Accounts]\ngroups = adm,video\ndefault_user = debian\n\n[InstanceSetup]\nset_host_keys = true\n"
        "alice\nbob\n4520031799277581759\n"
        '{"version": 1, "addresses": {"52:54:00:12:34:56": ["10.0.0.5/24"]}}\n'
        "token renewed; 3 passwords were not looked at\n"
    )
    assert redact.redact(text) == text


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_any_text_redacts_without_error_and_twice_is_once(text: str) -> None:
    once = redact.redact(text)
    assert redact.redact(once) == once


@pytest.mark.parametrize(
    ("path", "never"),
    [
        ("/etc/ssh/ssh_host_ed25519_key", True),
        ("/etc/ssh/ssh_host_rsa_key", True),
        ("/etc/ssh/ssh_host_rsa_key.pub", False),
        ("/root/.ssh/id_ed25519", True),
        ("/root/.ssh/id_ed25519.pub", False),
        ("/var/lib/waagent/TransportPrivate.pem", True),
        ("/var/lib/guestagent/tls.key", True),
        ("/var/lib/guestagent/instance-id", False),
        ("/etc/ssh/sshd_config", False),
    ],
)
def test_private_key_names_are_never_read(path: str, never: bool) -> None:
    assert redact.never_read(path) is never


@pytest.mark.parametrize(
    ("path", "member"),
    [
        ("/etc/hosts", "logs/etc/hosts"),
        ("/var/lib//guestagent/./x", "logs/var/lib/guestagent/x"),
        ("/var/lib/../../etc/shadow", None),
        ("/", None),
        ("/etc/bad\nname", None),
    ],
)
def test_member_names_are_relative_and_safe(path: str, member: str | None) -> None:
    assert redact.member_name("logs", path) == member


@given(st.text(max_size=60))
def test_member_names_never_escape(path: str) -> None:
    member = redact.member_name("logs", "/" + path)
    if member is not None:
        assert member.startswith("logs/")
        assert ".." not in member.split("/")
        assert not member.startswith("/")
