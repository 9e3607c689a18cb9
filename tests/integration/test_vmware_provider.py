"""VMware guestinfo through a fake `vmware-rpctool` on PATH (QEMU cannot emulate VMware's
backdoor channel): a small shell script this test writes, answering `info-get guestinfo.KEY`
from files, as open-vm-tools' tool answers from the VMX."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from guestagent.adapters.platforms import vmware as transport
from guestagent.adapters.platforms.detect import detect
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.platforms.vmware import DECODED_MAX, vmware
from guestagent.ports.metadata import MetadataUnavailable
from tests.integration.conftest import AGENT, read
from tests.keys import ED25519, RSA

UUID = "564d2c52-5e7a-4c1c-8ad3-29a7f1bd0a3e"
FAKE = """#!/bin/sh
# A stand-in for open-vm-tools' vmware-rpctool: `info-get guestinfo.KEY` prints the file KEY.
{shift}
case "$1" in
  "info-get guestinfo."*) key="${{1#info-get guestinfo.}}" ;;
  *) echo "Unknown command" >&2; exit 1 ;;
esac
echo "$1" >> "{store}/.calls"
[ -e "{store}/.broken" ] && {{ echo "Failed sending message to VMware." >&2; exit 1; }}
if [ -f "{store}/$key" ]; then cat "{store}/$key"; echo; exit 0; fi
echo "No value found" >&2
exit 1
"""


class Guestinfo:
    """The VMX's guestinfo keys as files, and the fake tool that serves them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str = "vmware-rpctool") -> None:
        self.store = tmp_path / "guestinfo"
        self.store.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        script = self.bin / tool
        # vmtoolsd takes the RPC after --cmd.
        script.write_text(FAKE.format(store=self.store, shift="shift" if tool == "vmtoolsd" else ""))
        script.chmod(0o755)
        self.path = f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        monkeypatch.setenv("PATH", self.path)

    def set(self, key: str, value: str, encoding: str | None = None) -> None:
        (self.store / key).write_text(value)
        if encoding is not None:
            (self.store / f"{key}.encoding").write_text(encoding)

    def calls(self) -> list[str]:
        path = self.store / ".calls"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def guestinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Guestinfo:
    return Guestinfo(tmp_path, monkeypatch)


def gzb64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data)).decode()


def source(tmp_path: Path, **kwargs: object) -> transport.VmwareMetadata:
    return transport.VmwareMetadata(root=str(tmp_path / "guest"), **kwargs)  # type: ignore[arg-type]


def set_dmi(tmp_path: Path, **fields: str) -> None:
    folder = tmp_path / "guest/sys/class/dmi/id"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in fields.items():
        (folder / name).write_text(value + "\n")


def test_json_metadata_and_user_data(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-42", "local-hostname": "vmware-vm",
                                          "public-keys": [ED25519, RSA]}))  # fmt: skip
    guestinfo.set("userdata", base64.b64encode(b"#!/bin/sh\necho user\n").decode(), "base64")
    guestinfo.set("vendordata", gzb64(b"#cloud-config\n"), "gzip+base64")
    snapshot = source(tmp_path).get()
    md = snapshot.metadata
    assert (md.platform, md.instance_id, md.hostname) == ("vmware", "vm-42", "vmware-vm")
    assert [(k.user, k.line) for k in md.ssh_keys] == [(None, ED25519), (None, RSA)]
    assert (md.user_data, md.vendor_data) == (b"#!/bin/sh\necho user\n", b"#cloud-config\n")
    assert guestinfo.calls() == [
        "info-get guestinfo.metadata", "info-get guestinfo.metadata.encoding",
        "info-get guestinfo.userdata", "info-get guestinfo.userdata.encoding",
        "info-get guestinfo.vendordata", "info-get guestinfo.vendordata.encoding",
    ]  # fmt: skip
    assert source(tmp_path).get().etag == snapshot.etag


def test_yaml_metadata_gzip_encoded_with_network_and_smbios_id(tmp_path: Path, guestinfo: Guestinfo) -> None:
    network = base64.b64encode(b"version: 2\nethernets:\n  ens192:\n    dhcp4: true\n").decode()
    yaml_text = f"local-hostname: yaml-vm\nnetwork: {network}\nnetwork.encoding: base64\npublic-keys: |\n  {ED25519}\n"
    guestinfo.set("metadata", gzb64(yaml_text.encode()), "gzip+base64")
    set_dmi(tmp_path, product_uuid=UUID.upper())
    md = source(tmp_path).get().metadata
    assert (md.instance_id, md.hostname) == (UUID, "yaml-vm")
    assert [k.line for k in md.ssh_keys] == [ED25519]
    assert vmware(md).network == b"version: 2\nethernets:\n  ens192:\n    dhcp4: true\n"


def test_redacted_values_count_as_absent(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1"}))
    guestinfo.set("userdata", "---")
    guestinfo.set("vendordata", "")
    md = source(tmp_path).get().metadata
    assert (md.user_data, md.vendor_data) == (None, None)


def test_a_gzip_bomb_in_user_data_holds_only_the_script_runners(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1", "local-hostname": "h"}))
    guestinfo.set("userdata", gzb64(b"\0" * (DECODED_MAX + 1)), "gzip+base64")
    md = source(tmp_path).get().metadata
    assert md.user_data is None and md.hostname == "h"
    assert {(r.concerns, r.holds) for r in md.rejections} == {("scripts", True), ("firstboot", True)}
    assert "inflates to more than" in md.rejections[0].reason


def test_nothing_in_guestinfo(tmp_path: Path, guestinfo: Guestinfo) -> None:
    with pytest.raises(MetadataUnavailable, match="no metadata, userdata or vendordata"):
        source(tmp_path).get()


def test_metadata_that_is_no_document(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", "{not: [valid")
    with pytest.raises(MetadataUnavailable, match=r"guestinfo\.metadata"):
        source(tmp_path).get()
    guestinfo.set("metadata", "%%%", "base64")
    with pytest.raises(MetadataUnavailable, match="not valid base64"):
        source(tmp_path).get()


def test_a_failing_tool_is_unavailable_not_absent(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1"}))
    (guestinfo.store / ".broken").write_text("")
    with pytest.raises(MetadataUnavailable, match="exit 1: Failed sending message to VMware"):
        source(tmp_path).get()


def test_without_open_vm_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MetadataUnavailable, match="neither vmware-rpctool nor vmtoolsd is installed"):
        transport.VmwareMetadata(root=str(tmp_path), runner=None).get()


def test_vmtoolsd_when_vmware_rpctool_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = Guestinfo(tmp_path, monkeypatch, tool="vmtoolsd")
    path = f"{info.bin}:/usr/bin:/bin"
    if shutil.which("vmware-rpctool", path=path) is not None:
        pytest.skip("this machine has a real vmware-rpctool")
    monkeypatch.setenv("PATH", path)
    info.set("metadata", json.dumps({"instance-id": "vm-7"}))
    assert source(tmp_path).get().metadata.instance_id == "vm-7"


def test_watch_follows_a_live_change(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1", "local-hostname": "before"}))
    watcher = source(tmp_path, poll_interval=0.2, backoff_max=0.5)
    seen: list[str] = []
    changed = threading.Event()

    def follow() -> None:
        for snapshot in watcher.watch(None):
            seen.append(snapshot.metadata.hostname)
            if len(seen) == 2:
                changed.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    for _ in range(600):
        if seen:
            break
        changed.wait(0.1)
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1", "local-hostname": "after"}))
    assert changed.wait(60)
    watcher.close()
    thread.join(30)
    assert not thread.is_alive()
    assert seen == ["before", "after"]


def test_watch_read_once(tmp_path: Path, guestinfo: Guestinfo) -> None:
    guestinfo.set("metadata", json.dumps({"instance-id": "vm-1"}))
    watcher = source(tmp_path, poll_interval=0)
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.extend(s.metadata.instance_id for s in watcher.watch(None)),
                              daemon=True)  # fmt: skip
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # yielded, then waits for close()
    calls = len(guestinfo.calls())
    watcher.close()
    thread.join(30)
    assert got == ["vm-1"] and len(guestinfo.calls()) == calls


def test_detected_by_dmi(tmp_path: Path) -> None:
    set_dmi(tmp_path, sys_vendor="VMware, Inc.", product_name="VMware7,1")
    found = detect(ProviderOptions(root=str(tmp_path / "guest"), url="http://127.0.0.1:9/"), timeout=30)
    assert (found.spec.name, found.reason) == ("vmware", "DMI sys_vendor is 'VMware, Inc.'")


@pytest.mark.root
def test_run_once_in_a_sandbox(sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = Guestinfo(tmp_path, monkeypatch)
    info.set("metadata", json.dumps({"instance-id": "vm-9", "local-hostname": "guestinfo-host",
                                     "public-keys": ED25519}))  # fmt: skip
    dmi = sandbox / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "sys_vendor").write_text("VMware, Inc.\n")
    config = sandbox / "etc/default/instance_configs.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[Accounts]\ndefault_user = debian\n")
    done = subprocess.run([*AGENT, "run", "--once", "--root", str(sandbox)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PATH": info.path})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "platform vmware: DMI sys_vendor is 'VMware, Inc.'" in done.stderr
    assert read(sandbox / "etc/hostname") == "guestinfo-host\n"
    assert f"# Added by guestagent\n{ED25519}\n" in (read(sandbox / "home/debian/.ssh/authorized_keys") or "")
