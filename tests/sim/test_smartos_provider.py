"""The SmartOS provider against the simulator's host: over its unix socket (a zone's
channel), and over a real pty joined to it by socat (the serial path: raw mode, the record
lock, draining); write-back, following changes, faults, and channels it must refuse.

Nothing here touches the machine: the pty and every path are the test's own, the only
peer is the simulator's socket in a private directory.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestagent.adapters import mdata_client
from guestagent.adapters.mdata_client import (
    MdataClient,
    MdataError,
    MdataFailure,
    MdataTimeout,
    MdataUnsafeChannel,
    MdataV1Only,
)
from guestagent.adapters.platforms import registry
from guestagent.adapters.platforms.smartos import PROVIDER, SmartOsMetadata, channel_path
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import Config, SmartOS
from guestagent.domain.metadata import MetadataScript
from guestagent.domain.platforms.smartos import smartos
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestsim import Simulator

from .conftest import DEMO, SCENARIOS

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQrd/Z1t1fJBEcjD6SOk5sbkxedozey/PW8b5q new@key"


def client(path: str, **kwargs: float) -> MdataClient:
    # Answers come in microseconds; these bounds only decide how long a fault test waits.
    settings = {"timeout": 3.0, "put_timeout": 3.0, "lock_timeout": 3.0, "reset_timeout": 0.5, **kwargs}
    return MdataClient(path, **settings)


def source(path: str, poll_interval: float = 30.0, **kwargs: float) -> SmartOsMetadata:
    return SmartOsMetadata(path, poll_interval=poll_interval, backoff_max=0.2, client=client(path, **kwargs))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(DEMO, platforms=("smartos",)) as running:
        yield running


@pytest.fixture
def sock(sim: Simulator) -> str:
    return sim.serial_socket("smartos")


# ------------------------------------------------------------------ the registry and detection


def test_registered_with_dmi_and_local_hints() -> None:
    spec = registry.provider("smartos")
    assert spec is PROVIDER
    assert spec.guest_attributes is True and spec.probe is None
    assert spec.dmi is not None and spec.dmi({"product_name": "SmartDC HVM"})


def test_local_hint_is_a_socket_never_a_bare_serial_device(tmp_path: Path, sock: str) -> None:
    assert PROVIDER.local is not None
    options = ProviderOptions(root=str(tmp_path))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ttyS1").write_text("")  # a plain file standing in for a UART
    assert PROVIDER.local(options) is None
    (tmp_path / "dev/ttyS1").unlink()
    (tmp_path / "dev/ttyS1").symlink_to(sock)
    assert "unix socket" in (PROVIDER.local(options) or "")
    assert channel_path(options) == str(tmp_path / "dev/ttyS1")
    zone = tmp_path / "native/.zonecontrol/metadata.sock"
    zone.parent.mkdir(parents=True)
    zone.symlink_to(sock)
    assert "zone metadata socket" in (PROVIDER.local(options) or "")
    assert channel_path(options) == str(zone)
    assert channel_path(ProviderOptions(url=f"unix:{sock}", root=str(tmp_path))) == sock


def test_configured_device_under_the_root(tmp_path: Path) -> None:
    config = Config(SmartOS=SmartOS(device="/dev/ttyS2"))
    assert channel_path(ProviderOptions(root=str(tmp_path), config=config)) == str(tmp_path / "dev/ttyS2")


# ------------------------------------------------------------------ reading


def test_demo_snapshot(sim: Simulator, sock: str) -> None:
    src = source(sock)
    md = src.get().metadata
    assert md.platform == "smartos"
    assert md.instance_id == sim.get("sdc:uuid", platform="smartos")
    assert md.hostname == "demo-vm"
    assert {k.user for k in md.ssh_keys} == {"root"}
    assert len(md.ssh_keys) == 3
    assert md.network_interfaces[0].mac == "42:01:0a:80:00:02"
    assert md.scripts["startup"] == (
        MetadataScript("user-script", False, str(sim.get("user-script", platform="smartos")), "instance"),
    )
    assert md.user_data == str(sim.get("user-data", platform="smartos")).encode()
    assert [r.describe() for r in md.rejections] == []
    src.close()


def test_static_network_snapshot() -> None:
    with Simulator(SCENARIOS / "static-network.yaml", platforms=("smartos",)) as running:
        md = source(running.serial_socket()).get().metadata
    first, second = md.network_interfaces
    assert first.static and first.addresses == ("192.0.2.10/24", "2001:db8::10/64")
    assert (first.gateway, first.gateway6) == ("192.0.2.1", "2001:db8::1")
    assert second.static and second.gateway is None
    assert md.dns_servers == ("192.0.2.53", "2001:db8::53")
    assert dict(smartos(md).interface_names) == {first.mac: "net0", second.mac: "net1"}


def test_one_session_per_snapshot_asks_every_key_once(sim: Simulator, sock: str) -> None:
    sim.clear_requests()
    source(sock).get()
    methods = [r["method"] for r in sim.requests()]
    assert methods[:2] == ["NEWLINE", "NEGOTIATE"]
    assert methods.count("GET") == 11 and methods.count("NEGOTIATE") == 1


def test_equal_answers_give_equal_tags(sim: Simulator, sock: str) -> None:
    src = source(sock)
    first, again = src.get(), src.get()
    assert first.etag == again.etag
    sim.set("root_authorized_keys", KEY, platform="smartos")
    assert src.get().etag != first.etag


def test_watch_follows_a_live_change(sim: Simulator, sock: str) -> None:
    src = source(sock, poll_interval=0.05)
    first = src.get()
    got: list[Snapshot] = []
    thread = threading.Thread(target=lambda: got.extend(src.watch(first.etag)), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        assert got == []  # nothing changed: nothing yielded
        sim.set("root_authorized_keys", KEY + "\n", platform="smartos")
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got and [k.line for k in got[0].metadata.ssh_keys] == [KEY]
    finally:
        src.close()
        thread.join(20)
    assert not thread.is_alive()


# ------------------------------------------------------------------ writing back


def test_put_guest_attribute_writes_a_prefixed_key(sim: Simulator, sock: str) -> None:
    src = source(sock)
    src.put_guest_attribute("hostkeys/ssh-ed25519", "AAAAC3Nza... host")
    src.put_guest_attribute("guest-agent/sshable", "1700000000")
    assert sim.state("smartos")["put"] == {
        "guestagent:hostkeys/ssh-ed25519": "AAAAC3Nza... host",
        "guestagent:guest-agent/sshable": "1700000000",
    }
    with pytest.raises(MetadataUnavailable, match="cannot write"):
        src.put_guest_attribute("two words", "x")


def test_the_host_refuses_sdc_writes(sock: str) -> None:
    with client(sock).session() as session, pytest.raises(MdataFailure, match='"sdc" Namespace'):
        session.put("sdc:hostname", b"evil")


def test_session_keys_and_delete(sim: Simulator, sock: str) -> None:
    with client(sock).session() as session:
        session.put("guestagent:x", b"1")
        listed = session.keys()  # a tuple of the host's customer keys
        assert "guestagent:x" in listed
        session.delete("guestagent:x")
        assert session.get("guestagent:x") is None
        assert session.get("sdc:hostname") == b"demo-vm"


# ------------------------------------------------------------------ faults


def test_a_failure_answer_holds_only_its_subsystem(sim: Simulator, sock: str) -> None:
    sim.add_fault("root_authorized_keys", "status", status=500, count=1)
    md = source(sock).get().metadata
    assert md.ssh_keys == ()
    assert [(r.where, r.concerns) for r in md.held("accounts")] == [("root_authorized_keys", "accounts")]
    assert md.hostname == "demo-vm"


def test_a_failure_for_the_uuid_is_unavailable(sim: Simulator, sock: str) -> None:
    sim.add_fault("sdc:uuid", "status", status=500, count=1)
    with pytest.raises(MetadataUnavailable, match="sdc:uuid"):
        source(sock).get()


@pytest.mark.parametrize(("kind", "params"), [("flavor", {}), ("flavor", {"flavor": "reqid"}),
                                               ("truncate", {}), ("html", {}), ("blackhole", {})])
def test_a_bad_or_missing_answer_is_dropped_and_the_snapshot_fails(
    sim: Simulator, sock: str, kind: str, params: dict[str, object]
) -> None:
    sim.add_fault("sdc:nics", kind, count=1, **params)
    src = source(sock, timeout=1.0)
    with pytest.raises(MdataTimeout, match="did not answer GET"):
        src.get()
    assert src.get().metadata.network_interfaces  # the next session is clean


def test_a_late_answer_to_an_earlier_request_is_dropped(sim: Simulator, sock: str) -> None:
    sim.add_fault("sdc:nics", "latency", delay=1.5, count=1)
    with client(sock, timeout=0.5).session() as session:
        with pytest.raises(MdataTimeout):
            session.get("sdc:nics")
        session._client.timeout = 5.0
        # The late sdc:nics answer arrives first, with the wrong request id: dropped.
        assert session.get("sdc:hostname") == b"demo-vm"


def test_garbage_before_the_answer_is_skipped(sim: Simulator, sock: str) -> None:
    with client(sock).session() as session:
        os.write(session._fd, b"\n")  # the host answers 'invalid command', not a frame
        assert session.get("sdc:hostname") == b"demo-vm"


def test_a_host_that_never_answers(sim: Simulator, sock: str) -> None:
    sim.add_fault("*", "blackhole")
    started = time.monotonic()
    with pytest.raises(MdataTimeout, match="invalid command"):
        source(sock, timeout=1.0).get()
    assert time.monotonic() - started < 30


def test_a_version_1_host_is_refused_clearly(sim: Simulator, sock: str) -> None:
    sim.set("guestsim:protocol", "v1", platform="smartos")
    with pytest.raises(MdataV1Only, match="only metadata protocol version 1"):
        source(sock).get()


def test_the_host_closing_the_line(sim: Simulator, sock: str) -> None:
    sim.add_fault("sdc:hostname", "reset", count=1)
    with pytest.raises(MdataError, match="closed"):
        source(sock).get()


def test_close_wakes_a_waiting_session(sim: Simulator, sock: str) -> None:
    sim.add_fault("*", "blackhole", method="GET")
    src = source(sock, timeout=60.0)
    errors: list[Exception] = []

    def read() -> None:
        try:
            src.get()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.5)
    src.close()
    thread.join(20)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], MdataError) and "closed" in str(errors[0])


# ------------------------------------------------------------------ channels refused


def test_a_regular_file_is_not_a_channel(tmp_path: Path) -> None:
    path = tmp_path / "ttyS1"
    path.write_text("")
    with pytest.raises(MdataUnsafeChannel, match="not a character device"), client(str(path)).session():
        pass


def test_a_missing_channel(tmp_path: Path) -> None:
    with pytest.raises(MdataError, match="cannot open"):
        source(str(tmp_path / "nope")).get()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_world_accessible_device_is_refused(tmp_path: Path) -> None:
    node = tmp_path / "ttyS1"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null twin in the test's dir
    node.chmod(0o666)
    with pytest.raises(MdataUnsafeChannel, match="every user"), client(str(node)).session():
        pass
    assert stat.S_IMODE(node.stat().st_mode) == 0o666  # refused, never "fixed"


# ------------------------------------------------------------------ the serial path: a pty


@pytest.fixture
def pty(tmp_path: Path, sock: str) -> Iterator[str]:
    """A pty joined to the simulator's socket by socat: what the guest's COM2 is to it."""
    if shutil.which("socat") is None:
        pytest.skip("needs socat (Debian package socat)")
    link = tmp_path / "ttyS1"
    proc = subprocess.Popen(
        ["socat", f"PTY,link={link},raw,echo=0", f"UNIX-CONNECT:{sock}"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not link.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        if not link.exists():
            pytest.fail(f"socat made no pty: {proc.stderr.read().decode() if proc.stderr else ''}")
        # Held open so that the line stays up between our sessions (closing the last
        # descriptor of a pty's slave would hang up socat's side).
        keep = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            yield str(link)
        finally:
            os.close(keep)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_over_a_serial_line(sim: Simulator, pty: str) -> None:
    mode = os.stat(pty).st_mode
    assert stat.S_ISCHR(mode) and not mode & 0o006
    src = source(pty)
    md = src.get().metadata
    assert md.hostname == "demo-vm" and len(md.ssh_keys) == 3
    src.put_guest_attribute("hostkeys/ssh-ed25519", "AAAA")
    assert sim.state("smartos")["put"] == {"guestagent:hostkeys/ssh-ed25519": "AAAA"}
    assert src.get().metadata.instance_id == md.instance_id


def test_a_serial_line_with_an_earlier_clients_leftovers(sim: Simulator, pty: str) -> None:
    """Another client left mid-answer: its bytes are drained before our session starts."""
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"NEGOTIATE V2\n" + b"GET root_authorized_keys\n")  # v1 GET: a multi-line answer
        time.sleep(0.3)
    finally:
        os.close(fd)
    assert source(pty).get().metadata.hostname == "demo-vm"


def test_the_serial_port_is_locked_against_other_clients(pty: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            pty,
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(MdataTimeout, match="stayed locked"):
            source(pty, lock_timeout=0.5).get()
    finally:
        holder.kill()
        holder.wait(10)
    assert source(pty).get().metadata.hostname == "demo-vm"


def test_client_module_defaults() -> None:
    assert mdata_client.DEFAULT_DEVICE == "/dev/ttyS1" == SmartOS().device
    assert mdata_client.ZONE_SOCKET == "/native/.zonecontrol/metadata.sock"
