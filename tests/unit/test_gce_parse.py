from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from guestagent.domain.platforms.gce import MetadataError, gce, parse_gce
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA


def doc(
    instance_attrs: dict[str, str] | None = None, project_attrs: dict[str, str] | None = None, **instance: Any
) -> dict[str, Any]:
    return {
        "instance": {
            "id": 4520031799277581759,
            "hostname": "vm-1.c.proj.internal",
            "attributes": instance_attrs or {},
            **instance,
        },
        "project": {"projectId": "proj", "numericProjectId": 123456789012, "attributes": project_attrs or {}},
    }


def users_keys(md: Any) -> list[tuple[str, str]]:
    return [(k.user, k.line) for k in md.ssh_keys]


def test_instance_and_project_keys_are_merged() -> None:
    md = parse_gce(doc({"ssh-keys": f"alice:{ED25519}"}, {"ssh-keys": f"bob:{ED25519_BOB}"}))
    assert users_keys(md) == [("alice", ED25519), ("bob", ED25519_BOB)]
    assert md.instance_id == "4520031799277581759"
    assert md.hostname == "vm-1.c.proj.internal"
    assert gce(md).numeric_project_id == "123456789012"


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1"])
def test_block_project_keys_accepts_string_booleans(value: str) -> None:
    md = parse_gce(
        doc(
            {"ssh-keys": f"alice:{ED25519}", "block-project-ssh-keys": value},
            {"ssh-keys": f"bob:{ED25519_BOB}"},
        )
    )
    assert md.users() == {"alice"}


def test_legacy_instance_sshkeys_blocks_project_keys() -> None:
    md = parse_gce(doc({"sshKeys": f"alice:{RSA}"}, {"ssh-keys": f"bob:{ED25519_BOB}"}))
    assert users_keys(md) == [("alice", RSA)]


def test_legacy_project_sshkeys_are_read() -> None:
    md = parse_gce(doc({}, {"sshKeys": f"carol:{ECDSA}"}))
    assert users_keys(md) == [("carol", ECDSA)]


@pytest.mark.parametrize(
    ("expire", "when"),
    [
        ("2026-01-01T00:00:00+0000", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_google_ssh_expiry_in_both_time_formats(expire: str, when: datetime) -> None:
    line = f'{RSA.rsplit(" ", 1)[0]} google-ssh {{"userName":"alice@example.com","expireOn":"{expire}"}}'
    md = parse_gce(doc({"ssh-keys": f"alice:{line}"}))
    assert md.ssh_keys[0].expires_at == when
    assert md.ssh_keys[0].line == line


def test_unparsable_expiry_rejects_the_key_with_a_reason() -> None:
    line = f'{ED25519.rsplit(" ", 1)[0]} google-ssh {{"userName":"a@b","expireOn":"next tuesday"}}'
    md = parse_gce(doc({"ssh-keys": f"alice:{line}\nbob:{ED25519_BOB}"}))
    assert md.users() == {"bob"}
    [rejection] = md.rejections
    assert rejection.where == "instance/attributes/ssh-keys line 1"
    assert "expiry" in rejection.reason


def test_bad_lines_are_rejected_one_by_one_with_reasons() -> None:
    text = "\n".join(
        [
            f"alice:{ED25519}",
            "no-colon-here",
            f"-rf:{ED25519}",
            "mallory:ssh-ed25519 AAAA!!notbase64",
            "",
            f"bob:{ED25519_BOB}",
        ]
    )
    md = parse_gce(doc({"ssh-keys": text}))
    assert md.users() == {"alice", "bob"}
    assert [r.where for r in md.rejections] == [
        "instance/attributes/ssh-keys line 2",
        "instance/attributes/ssh-keys line 3",
        "instance/attributes/ssh-keys line 4",
    ]
    assert all("AAAA" not in r.reason for r in md.rejections)


def test_enable_oslogin_instance_overrides_project() -> None:
    assert gce(parse_gce(doc({"enable-oslogin": "FALSE"}, {"enable-oslogin": "true"}))).oslogin_enabled is False
    assert gce(parse_gce(doc({}, {"enable-oslogin": "TRUE"}))).oslogin_enabled is True
    assert gce(parse_gce(doc({"enable-oslogin": "maybe"}, {"enable-oslogin": "1"}))).oslogin_enabled is True


def test_network_interfaces_and_clock_token() -> None:
    md = parse_gce(
        doc(
            networkInterfaces=[
                {
                    "mac": "42:01:0A:80:00:02",
                    "ip": "10.128.0.2",
                    "forwardedIps": ["10.128.0.100", "bogus"],
                    "forwardedIpv6s": ["2600:1900:4000:1::/96"],
                    "targetInstanceIps": ["10.128.0.200"],
                    "ipAliases": ["10.8.0.0/24"],
                    "mtu": 1460,
                    "gateway": "10.128.0.1",
                }
            ],
            virtualClock={"driftToken": "123"},
        )
    )
    [nic] = md.network_interfaces
    [routes] = gce(md).nics
    assert nic.mac == routes.mac == "42:01:0a:80:00:02"
    assert (nic.ip, nic.gateway, nic.mtu) == ("10.128.0.2", "10.128.0.1", 1460)
    assert routes.forwarded_ips == ("10.128.0.100",)
    assert routes.forwarded_ipv6s == ("2600:1900:4000:1::/96",)
    assert routes.target_instance_ips == ("10.128.0.200",)
    assert routes.ip_aliases == ("10.8.0.0/24",)
    assert gce(md).clock_drift_token == "123"
    # The bad value concerns routes alone: only that subsystem logs it or runs again for it.
    [bad] = md.rejections
    assert (bad.where, bad.concerns, bad.holds) == ("instance/network-interfaces/0/forwarded-ips", "routes", False)


@pytest.mark.parametrize(
    "bad", [[], "html", {"project": {}}, {"instance": {"hostname": "x"}}, {"instance": {"id": True}}]
)
def test_documents_without_an_instance_are_errors(bad: object) -> None:
    with pytest.raises(MetadataError):
        parse_gce(bad)


def test_attribute_precedence_helper() -> None:
    md = parse_gce(doc({"startup-script": "i"}, {"startup-script": "p", "shutdown-script": "s"}))
    assert gce(md).attribute("startup-script") == "i"
    assert gce(md).attribute("shutdown-script") == "s"
    assert gce(md).attribute("nothing") is None
