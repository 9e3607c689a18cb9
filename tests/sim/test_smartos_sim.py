"""The simulator's SmartOS host: the metadata protocol on a unix socket per VM, spoken here
by a raw client written out in the test (not the agent's), plus scenario rendering, live
changes, what the guest wrote back, faults and the request log."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestsim import Simulator

from .conftest import DEMO, SCENARIOS

TIMEOUT = 10.0


def frame(reqid: str, code: str, payload: bytes | None = None) -> bytes:
    body = f"{reqid} {code}".encode()
    if payload is not None:
        body += b" " + base64.b64encode(payload)
    return b"V2 %d %08x %s\n" % (len(body), zlib.crc32(body), body)


def unframe(line: bytes) -> tuple[str, str, bytes | None]:
    """(reqid, code, payload) of an answer, checked the way a client must."""
    assert line.endswith(b"\n")
    marker, length, crc, body = line[:-1].split(b" ", 3)
    assert marker == b"V2"
    assert int(length) == len(body)
    assert int(crc, 16) == zlib.crc32(body)
    fields = body.split(b" ")
    payload = base64.b64decode(fields[2], validate=True) if len(fields) == 3 else None
    return fields[0].decode(), fields[1].decode(), payload


class Line:
    """One connection to the host, line by line."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")

    def send(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def readline(self) -> bytes:
        return self.file.readline()

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.readline()

    def request(self, code: str, payload: bytes | None = None, reqid: str = "0badcafe") -> tuple[str, bytes | None]:
        got_id, got_code, got = unframe(self.ask(frame(reqid, code, payload)))
        assert got_id == reqid
        return got_code, got

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def demo() -> Iterator[Simulator]:
    with Simulator(DEMO, platforms=("smartos",)) as sim:
        yield sim


@pytest.fixture
def line(demo: Simulator) -> Iterator[Line]:
    conn = Line(demo.serial_socket("smartos"))
    yield conn
    conn.close()


def put_payload(key: str, value: bytes) -> bytes:
    return base64.b64encode(key.encode()) + b" " + base64.b64encode(value)


# ------------------------------------------------------------------ the socket


def test_the_socket_is_private_and_goes_away_with_the_simulator() -> None:
    with Simulator(None, platforms=("smartos",)) as sim:
        path = Path(sim.serial_socket())
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.exists() and not path.parent.exists()


def test_each_vm_of_a_fleet_has_its_own_socket() -> None:
    with Simulator(SCENARIOS / "fleet.yaml", platforms=("smartos",)) as sim:
        names = [i.name for i in sim.server.instances]
        paths = {name: sim.serial_socket(instance=name) for name in names}
        assert len(set(paths.values())) == len(names)
        for name, path in paths.items():
            conn = Line(path)
            conn.ask(b"NEGOTIATE V2\n")
            assert conn.request("GET", b"sdc:hostname")[1] == name.encode()
            conn.close()


def test_other_platforms_share_the_simulator(demo: Simulator) -> None:
    with Simulator(DEMO, platforms=("gce", "smartos")) as sim:
        conn = Line(sim.serial_socket("smartos"))
        assert conn.ask(b"NEGOTIATE V2\n") == b"V2_OK\n"
        conn.close()


# ------------------------------------------------------------------ the protocol


def test_newline_and_negotiation(line: Line) -> None:
    assert line.ask(b"\n") == b"invalid command\n"
    assert line.ask(b"NEGOTIATE V2\n") == b"V2_OK\n"
    assert line.ask(b"NEGOTIATE V3\n") == b"FAILURE\n"


def test_demo_scenario_keys(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    uuid = line.request("GET", b"sdc:uuid")
    assert uuid[0] == "SUCCESS" and uuid[1] is not None
    assert len(uuid[1].decode().split("-")) == 5
    assert line.request("GET", b"sdc:hostname") == ("SUCCESS", b"demo-vm")
    keys = line.request("GET", b"root_authorized_keys")[1]
    assert keys is not None and keys.decode().count("\n") == 3  # alice, bob (with options), carol
    assert b'from="10.0.0.0/8",no-port-forwarding ssh-rsa' in keys
    nics = json.loads(line.request("GET", b"sdc:nics")[1] or b"")
    assert nics[0]["mac"] == "42:01:0a:80:00:02" and nics[0]["primary"] is True
    assert nics[0]["interface"] == "net0"
    assert line.request("GET", b"user-script")[1] == demo.get("user-script").encode()
    assert line.request("GET", b"nope") == ("NOTFOUND", None)


def test_static_network_scenario_renders_static_nics() -> None:
    with Simulator(SCENARIOS / "static-network.yaml", platforms=("smartos",)) as sim:
        nics = sim.get("sdc:nics", platform="smartos")
        assert nics[0]["ips"] == ["192.0.2.10/24", "2001:db8::10/64"]
        assert nics[0]["gateways"] == ["192.0.2.1", "2001:db8::1"]
        assert nics[0]["netmask"] == "255.255.255.0"
        assert nics[1]["primary"] is False
        assert sim.get("sdc:resolvers", platform="smartos") == ["192.0.2.53", "2001:db8::53"]


def test_keys_lists_customer_keys_only(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    code, payload = line.request("KEYS")
    assert code == "SUCCESS"
    listed = (payload or b"").decode().split("\n")
    assert "root_authorized_keys" in listed and "user-script" in listed
    assert not [k for k in listed if k.startswith(("sdc:", "guestsim:"))]


def test_put_get_delete_round_trip(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    assert line.request("PUT", put_payload("guestagent:hostkeys/ssh-ed25519", b"AAAA")) == ("SUCCESS", b"OK")
    assert line.request("GET", b"guestagent:hostkeys/ssh-ed25519") == ("SUCCESS", b"AAAA")
    assert demo.get("guestagent:hostkeys/ssh-ed25519", platform="smartos") == "AAAA"
    assert "guestagent:hostkeys/ssh-ed25519" in (line.request("KEYS")[1] or b"").decode()
    assert line.request("DELETE", b"guestagent:hostkeys/ssh-ed25519") == ("SUCCESS", b"OK")
    assert line.request("DELETE", b"never-there") == ("SUCCESS", b"OK")
    assert line.request("GET", b"guestagent:hostkeys/ssh-ed25519") == ("NOTFOUND", None)
    assert demo.state("smartos") == {
        "put": {},
        "deleted": ["guestagent:hostkeys/ssh-ed25519", "never-there"],
    }


def test_an_empty_put_is_refused_as_on_triton(line: Line, demo: Simulator) -> None:
    # base64("") is empty, the host trims the payload and finds one word, not two.
    line.ask(b"NEGOTIATE V2\n")
    line.request("PUT", put_payload("k", b"v"))
    assert line.request("PUT", put_payload("k", b"")) == ("FAILURE", b"Invalid PUT Request")
    assert line.request("GET", b"k") == ("SUCCESS", b"v")


def test_the_sdc_namespace_is_read_only(line: Line) -> None:
    line.ask(b"NEGOTIATE V2\n")
    code, message = line.request("PUT", put_payload("sdc:hostname", b"evil"))
    assert (code, message) == ("FAILURE", b'Cannot update the "sdc" Namespace.')
    assert line.request("DELETE", b"sdc:uuid")[0] == "FAILURE"
    assert line.request("GET", b"sdc:hostname") == ("SUCCESS", b"demo-vm")
    assert line.request("PUT", b"not two words")[0] == "FAILURE"
    assert line.request("FROB")[0] == "FAILURE"


def test_a_frame_with_a_bad_checksum_or_length_gets_no_answer(line: Line) -> None:
    line.ask(b"NEGOTIATE V2\n")
    good = frame("0badcafe", "GET", b"sdc:hostname")
    bad_crc = good.replace(good.split(b" ")[2], b"00000000")
    bad_len = b"V2 99 " + good.split(b" ", 2)[2]
    line.send(bad_crc + bad_len + frame("00000001", "GET", b"sdc:hostname"))
    assert unframe(line.readline()) == ("00000001", "SUCCESS", b"demo-vm")


def test_several_requests_in_one_write_are_answered_in_order(line: Line) -> None:
    line.ask(b"NEGOTIATE V2\n")
    line.send(b"".join(frame(f"0000000{i}", "GET", b"sdc:hostname") for i in range(5)))
    assert [unframe(line.readline())[0] for _ in range(5)] == [f"0000000{i}" for i in range(5)]


def test_version_1_get_dot_stuffs_the_value(line: Line, demo: Simulator) -> None:
    demo.set("motd", ".hidden\nline\n..two", platform="smartos")
    line.send(b"GET motd\n")
    got = [line.readline() for _ in range(5)]
    assert got == [b"SUCCESS\n", b"..hidden\n", b"line\n", b"...two\n", b".\n"]
    assert line.ask(b"GET nope\n") == b"NOTFOUND\n"
    assert line.ask(b"GET\n") == b"invalid command\n"


def test_a_version_1_only_host(line: Line, demo: Simulator) -> None:
    demo.set("guestsim:protocol", "v1", platform="smartos")
    assert line.ask(b"\n") == b"invalid command\n"
    assert line.ask(b"NEGOTIATE V2\n") == b"FAILURE\n"
    assert line.ask(frame("0badcafe", "GET", b"sdc:uuid")) == b"FAILURE\n"
    assert line.ask(b"GET sdc:hostname\n") == b"SUCCESS\n"
    assert [line.readline(), line.readline()] == [b"demo-vm\n", b".\n"]
    # The host's settings are never served.
    assert line.ask(b"GET guestsim:protocol\n") == b"NOTFOUND\n"


# ------------------------------------------------------------------ live changes


def test_live_changes_through_set_get_delete(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.set("root_authorized_keys", "ssh-ed25519 AAAA new", platform="smartos")
    assert line.request("GET", b"root_authorized_keys") == ("SUCCESS", b"ssh-ed25519 AAAA new")
    demo.set("sdc:nics/0/mtu", 9000, platform="smartos")
    assert json.loads(line.request("GET", b"sdc:nics")[1] or b"")[0]["mtu"] == 9000
    assert demo.get("sdc:nics/0/mtu", platform="smartos") == 9000
    demo.set("sdc:nics", "not json", platform="smartos")
    assert line.request("GET", b"sdc:nics") == ("SUCCESS", b"not json")
    demo.delete("root_authorized_keys", platform="smartos")
    assert line.request("GET", b"root_authorized_keys") == ("NOTFOUND", None)


def test_apply_rerenders_and_keeps_what_the_guest_wrote(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    line.request("PUT", put_payload("guestagent:guest-agent/sshable", b"1700000000"))
    line.request("DELETE", b"user-script")
    demo.apply({"instance": {"name": "renamed"}, "scripts": {"startup": "echo hi"}})
    assert line.request("GET", b"sdc:hostname") == ("SUCCESS", b"renamed")
    assert line.request("GET", b"guestagent:guest-agent/sshable") == ("SUCCESS", b"1700000000")
    assert line.request("GET", b"user-script") == ("NOTFOUND", None)  # the guest deleted it
    assert demo.state("smartos")["put"] == {"guestagent:guest-agent/sshable": "1700000000"}


def test_overrides_merge_raw_keys() -> None:
    scn = {"overrides": {"smartos": {"hostname": "from-customer", "sdc:routes": None}}}
    with Simulator(scn, platforms=("smartos",)) as sim:
        assert sim.get("hostname", platform="smartos") == "from-customer"
        with pytest.raises(KeyError):
            sim.get("sdc:routes", platform="smartos")


# ------------------------------------------------------------------ faults and the log


def test_the_request_log(line: Line, demo: Simulator) -> None:
    demo.clear_requests()
    line.ask(b"\n")
    line.ask(b"NEGOTIATE V2\n")
    line.request("GET", b"sdc:uuid")
    line.request("GET", b"nope")
    line.request("PUT", put_payload("sdc:x", b"y"))
    log = [(r["method"], r["path"], r["status"], r["platform"]) for r in demo.requests()]
    assert log == [
        ("NEWLINE", "", 400, "smartos"),
        ("NEGOTIATE", "V2", 200, "smartos"),
        ("GET", "sdc:uuid", 200, "smartos"),
        ("GET", "nope", 404, "smartos"),
        ("PUT", "sdc:x", 500, "smartos"),
    ]
    assert [r["path"] for r in demo.requests(path="sdc:*", method="GET")] == ["sdc:uuid"]


def test_fault_failure_and_notfound(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("root_authorized_keys", "status", status=500, count=1)
    assert line.request("GET", b"root_authorized_keys") == ("FAILURE", b"injected 500")
    assert line.request("GET", b"root_authorized_keys")[0] == "SUCCESS"
    demo.add_fault("sdc:uuid", "status", status=404, count=1)
    assert line.request("GET", b"sdc:uuid") == ("NOTFOUND", None)


def test_fault_no_answer(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("sdc:uuid", "blackhole", count=1)
    line.send(frame("00000001", "GET", b"sdc:uuid"))
    assert line.request("GET", b"sdc:hostname", reqid="00000002") == ("SUCCESS", b"demo-vm")
    assert [r["outcome"] for r in demo.requests(path="sdc:uuid")] == ["blackhole"]


def test_fault_garbled_checksum_and_wrong_id(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("sdc:hostname", "flavor", count=1)
    answer = line.ask(frame("00000001", "GET", b"sdc:hostname"))
    _, length, crc, body = answer.rstrip(b"\n").split(b" ", 3)
    assert int(length) == len(body) and body == b"00000001 SUCCESS " + base64.b64encode(b"demo-vm")
    assert int(crc, 16) != zlib.crc32(body)
    demo.add_fault("sdc:hostname", "flavor", flavor="reqid", count=1)
    assert unframe(line.ask(frame("00000001", "GET", b"sdc:hostname")))[0] == "00000002"


def test_fault_truncated_frame_and_garbage_line(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("sdc:nics", "truncate", fraction=0.5, count=1)
    answer = line.ask(frame("00000001", "GET", b"sdc:nics"))
    _, length, _crc, body = answer.rstrip(b"\n").split(b" ", 3)
    assert int(length) > len(body)
    demo.add_fault("sdc:nics", "html", count=1)
    assert not line.ask(frame("00000001", "GET", b"sdc:nics")).startswith(b"V2 ")


def test_fault_body_is_a_value_of_the_tests_choosing(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("sdc:nics", "body", body='{"deep": ' * 50, count=1)
    assert line.request("GET", b"sdc:nics") == ("SUCCESS", b'{"deep": ' * 50)


def test_fault_reset_closes_the_line(line: Line, demo: Simulator) -> None:
    line.ask(b"NEGOTIATE V2\n")
    demo.add_fault("*", "reset", method="GET", count=1)
    assert line.ask(frame("00000001", "GET", b"sdc:uuid")) == b""  # EOF
    again = Line(demo.serial_socket())
    assert again.ask(b"NEGOTIATE V2\n") == b"V2_OK\n"
    again.close()


def test_fault_on_negotiation(line: Line, demo: Simulator) -> None:
    demo.add_fault("*", "blackhole", method="NEGOTIATE", count=1)
    line.send(b"NEGOTIATE V2\n")
    assert line.ask(b"\n") == b"invalid command\n"  # the first got no answer


def test_simulator_tree_is_json_safe(demo: Simulator) -> None:
    tree = demo.get("", platform="smartos")
    assert json.loads(json.dumps(tree)) == tree
    assert os.path.isabs(demo.serial_socket())
