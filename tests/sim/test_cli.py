"""`guestsim serve` in its own process, driven by the CLI verbs and the control API."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from guestsim import Simulator

from .conftest import DEMO, FLAVOR


class Served:
    def __init__(self, proc: subprocess.Popen[str], urls: dict[str, str]) -> None:
        self.proc = proc
        self.urls = urls

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "guestsim.cli", "--control", self.urls["control"], *args],
            capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(tmp_path, "gce") as server:
        yield server


@contextlib.contextmanager
def serving(tmp_path: Path, *platforms: str) -> Iterator[Served]:
    flags = [arg for name in platforms for arg in ("--platform", name)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "guestsim.cli", "serve", *flags,
         "--scenario", str(DEMO), "--state-file", str(tmp_path / "state.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    urls: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        while "control" not in urls:
            line = proc.stdout.readline()
            assert line, "serve exited early"
            name, _, url = line.rpartition(": ")
            urls["control" if name == "control" else name.split()[-1]] = url.strip()
        yield Served(proc, urls)
    finally:
        proc.terminate()  # SIGTERM: serve must exit cleanly
        assert proc.wait(timeout=10) == 0
        assert not (tmp_path / "state.json").exists()


def test_serve_prints_urls_and_serves(served: Served) -> None:
    assert served.urls["gce"].endswith("/computeMetadata/v1/")
    r = requests.get(served.urls["gce"] + "instance/name", headers=FLAVOR, timeout=5)
    assert r.text == "demo-vm"


def test_serve_opens_and_prints_the_smartos_socket_and_removes_it_at_exit(tmp_path: Path) -> None:
    with serving(tmp_path, "gce", "smartos") as server:
        address = server.urls["smartos"]
        assert address.startswith("unix:"), address
        path = Path(address.removeprefix("unix:"))
        with socket.socket(socket.AF_UNIX) as channel:
            channel.settimeout(10)
            channel.connect(str(path))
            channel.sendall(b"NEGOTIATE V2\n")
            assert channel.recv(64) == b"V2_OK\n"
        assert server.urls["gce"].endswith("/computeMetadata/v1/")
    assert not path.exists() and not path.parent.exists()


def test_get_set_delete(served: Served) -> None:
    assert served.cli("get", "instance/name").stdout.strip() == "demo-vm"
    served.cli("set", "instance/attributes/enable-oslogin", "TRUE")
    r = requests.get(served.urls["gce"] + "instance/attributes/enable-oslogin", headers=FLAVOR,
                     timeout=5)
    assert r.text == "TRUE"
    served.cli("set", "instance/attributes/nested", '{"a": [1, 2]}', "--json")
    assert json.loads(served.cli("get", "instance/attributes/nested").stdout) == {"a": [1, 2]}
    served.cli("delete", "instance/attributes/enable-oslogin")
    missing = served.cli("get", "instance/attributes/enable-oslogin", check=False)
    assert missing.returncode != 0
    assert "404" in missing.stderr


def test_fault_and_log(served: Served) -> None:
    fid = served.cli("fault", "add", "instance/*", "status", "--status", "503", "--count", "1")
    assert fid.stdout.strip().isdigit()
    url = served.urls["gce"] + "instance/name"
    assert requests.get(url, headers=FLAVOR, timeout=5).status_code == 503
    assert requests.get(url, headers=FLAVOR, timeout=5).status_code == 200
    served.cli("fault", "add", "*", "sequence", "--steps", "500,ok")
    assert len(json.loads(served.cli("fault", "list").stdout)) == 1
    served.cli("fault", "clear")
    assert json.loads(served.cli("fault", "list").stdout) == []
    lines = [json.loads(x) for x in served.cli("log").stdout.splitlines()]
    assert [e["status"] for e in lines[-2:]] == [503, 200]
    for key in ("time", "client", "method", "path", "query", "headers", "status", "duration"):
        assert key in lines[-1]


def test_state_shows_guest_attributes(served: Served) -> None:
    requests.put(served.urls["gce"] + "instance/guest-attributes/guest-agent/sshable",
                 data="1700000000", headers=FLAVOR, timeout=5)
    state = json.loads(served.cli("state").stdout)
    assert state["guest_attributes"] == {"guest-agent/sshable": "1700000000"}


def test_control_api_from_python() -> None:
    with Simulator(DEMO, control_port=0) as sim:
        assert sim.control_url is not None
        base = sim.control_url
        info = requests.get(base + "/v1/info", timeout=5).json()
        assert info["instances"][0]["name"] == "demo-vm"
        requests.put(base + "/v1/tree/instance/attributes/x", data="y",
                     headers={"Content-Type": "text/plain"}, timeout=5).raise_for_status()
        assert sim.get("instance/attributes/x") == "y"
        bad = requests.post(base + "/v1/faults", json={"pattern": "*", "kind": "nope"}, timeout=5)
        assert bad.status_code == 400
        assert requests.get(base + "/v1/tree/nope", timeout=5).status_code == 404


def test_apply_suspend_resume(served: Served, tmp_path: Path) -> None:
    doc = tmp_path / "new.yaml"
    doc.write_text("instance: {name: renamed}\nusers: [{name: zed, keys: ['ssh-ed25519 AAAAz zed']}]\n")
    served.cli("apply", str(doc))
    url = served.urls["gce"]
    assert requests.get(url + "instance/name", headers=FLAVOR, timeout=5).text == "renamed"
    keys = requests.get(url + "instance/attributes/ssh-keys", headers=FLAVOR, timeout=5).text
    assert keys == "zed:ssh-ed25519 AAAAz zed"
    served.cli("suspend")
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "instance/name", headers=FLAVOR, timeout=2)
    served.cli("resume")
    assert requests.get(url + "instance/name", headers=FLAVOR, timeout=5).text == "renamed"
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: [{}]\n")
    failed = served.cli("apply", str(bad), check=False)
    assert failed.returncode != 0
    assert "400" in failed.stderr
