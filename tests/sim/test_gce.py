"""The GCE metadata server as a client sees it."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time

import requests

from guestsim import Simulator

from .conftest import FLAVOR


def test_flavor_header_required_and_echoed(demo_sim: Simulator, http: requests.Session) -> None:
    url = demo_sim.url("gce") + "instance/name"
    denied = http.get(url)
    assert denied.status_code == 403
    assert denied.headers["Metadata-Flavor"] == "Google"
    ok = http.get(url, headers=FLAVOR)
    assert ok.status_code == 200
    assert ok.text == "demo-vm"
    assert ok.headers["Metadata-Flavor"] == "Google"
    assert ok.headers["ETag"]


def test_x_forwarded_for_is_refused(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(demo_sim.url() + "instance/name", headers={**FLAVOR, "X-Forwarded-For": "1.2.3.4"})
    assert r.status_code == 403


def test_root_probe_needs_no_header(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(f"http://127.0.0.1:{demo_sim.port}/")
    assert r.status_code == 200
    assert r.headers["Metadata-Flavor"] == "Google"


def test_directory_without_slash_redirects(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(demo_sim.url() + "instance/attributes?recursive=true", headers=FLAVOR,
                 allow_redirects=False)
    assert r.status_code == 301
    assert r.headers["Location"] == "/computeMetadata/v1/instance/attributes/?recursive=true"
    followed = http.get(demo_sim.url() + "instance/attributes", headers=FLAVOR)
    assert followed.status_code == 200
    assert "ssh-keys" in followed.text.splitlines()


def test_double_slash_and_capital_true(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(f"http://127.0.0.1:{demo_sim.port}/computeMetadata/v1//?recursive=True",
                 headers=FLAVOR)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    inst = doc["instance"]
    assert inst["id"] == 4520031799277581759
    assert doc["project"]["numericProjectId"] == 123456789012
    assert doc["project"]["projectId"] == "demo-project"
    nic = inst["networkInterfaces"][0]
    assert nic["mac"] == "42:01:0a:80:00:02"
    assert nic["forwardedIps"] == ["10.128.0.100"]
    assert nic["targetInstanceIps"] == ["10.128.0.200"]
    assert nic["ipAliases"] == ["10.8.0.0/24"]
    assert nic["forwardedIpv6s"] == []
    assert nic["mtu"] == 1460
    assert inst["virtualClock"] == {"driftToken": "0"}
    assert inst["machineType"] == "projects/123456789012/machineTypes/e2-small"
    # Attribute names stay as written, not camelCased.
    assert "block-project-ssh-keys" in inst["attributes"]
    assert "startup-script" in inst["attributes"]
    assert inst["guestAttributes"] == {}


def test_ssh_keys_render_user_key_lines(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(demo_sim.url() + "instance/attributes/ssh-keys", headers=FLAVOR)
    lines = r.text.splitlines()
    assert lines[0].startswith("alice:ssh-ed25519 AAAA")
    assert lines[1].startswith('bob:from="10.0.0.0/8",no-port-forwarding ssh-rsa AAAA')
    project = http.get(demo_sim.url() + "project/attributes/ssh-keys", headers=FLAVOR).text
    user, _, rest = project.partition(":")
    assert user == "carol"
    meta = json.loads(rest.split(" google-ssh ", 1)[1])
    assert meta == {"userName": "carol@example.com", "expireOn": "2035-01-01T00:00:00+0000"}


def test_listing_and_text_forms(demo_sim: Simulator, http: requests.Session) -> None:
    listing = http.get(demo_sim.url() + "instance/", headers=FLAVOR).text.splitlines()
    assert "attributes/" in listing
    assert "network-interfaces/" in listing
    assert "hostname" in listing
    nics = http.get(demo_sim.url() + "instance/network-interfaces/", headers=FLAVOR).text
    assert nics == "0/\n"
    ip = http.get(demo_sim.url() + "instance/network-interfaces/0/forwarded-ips/0", headers=FLAVOR)
    assert ip.text == "10.128.0.100"
    text = http.get(demo_sim.url() + "instance/network-interfaces/?recursive=true&alt=text",
                    headers=FLAVOR).text
    assert "0/ip 10.128.0.2\n" in text
    as_json = http.get(demo_sim.url() + "instance/id?alt=json", headers=FLAVOR)
    assert as_json.json() == 4520031799277581759


def test_missing_key_is_404(demo_sim: Simulator, http: requests.Session) -> None:
    r = http.get(demo_sim.url() + "instance/attributes/nope", headers=FLAVOR)
    assert r.status_code == 404
    assert r.headers["Metadata-Flavor"] == "Google"
    leaf_slash = http.get(demo_sim.url() + "instance/name/", headers=FLAVOR)
    assert leaf_slash.status_code == 404


def test_set_get_delete_through_api(demo_sim: Simulator, http: requests.Session) -> None:
    url = demo_sim.url() + "instance/attributes/enable-oslogin"
    demo_sim.set("instance/attributes/enable-oslogin", "TRUE")
    assert http.get(url, headers=FLAVOR).text == "TRUE"
    assert demo_sim.get("instance/attributes/enable-oslogin") == "TRUE"
    demo_sim.delete("instance/attributes/enable-oslogin")
    assert http.get(url, headers=FLAVOR).status_code == 404
    demo_sim.set("instance/attributes/new-dir", {"a": "1"})
    assert http.get(demo_sim.url() + "instance/attributes/new-dir/a", headers=FLAVOR).text == "1"


def test_etag_is_per_subtree(demo_sim: Simulator, http: requests.Session) -> None:
    def etag(path: str) -> str:
        return http.get(demo_sim.url() + path, headers=FLAVOR).headers["ETag"]

    attrs, nics = etag("instance/attributes/"), etag("instance/network-interfaces/")
    demo_sim.set("instance/attributes/foo", "bar")
    assert etag("instance/attributes/") != attrs
    assert etag("instance/network-interfaces/") == nics
    demo_sim.delete("instance/attributes/foo")
    assert etag("instance/attributes/") == attrs  # content hash: same content, same etag


def test_long_poll_none_returns_at_once(demo_sim: Simulator, http: requests.Session) -> None:
    t = time.monotonic()
    r = http.get(demo_sim.url() + "instance/attributes/?recursive=true&wait_for_change=true"
                 "&last_etag=NONE&timeout_sec=120", headers=FLAVOR)
    assert r.status_code == 200
    # at once, not held for timeout_sec (a generous bound far below it, for loaded machines)
    assert time.monotonic() - t < 30


def test_long_poll_released_by_change(demo_sim: Simulator, http: requests.Session) -> None:
    base = demo_sim.url() + "instance/attributes/?recursive=true&alt=json"
    first = http.get(base, headers=FLAVOR)
    etag = first.headers["ETag"]
    result: dict[str, requests.Response] = {}

    def poll() -> None:
        result["r"] = requests.get(
            f"{base}&wait_for_change=true&last_etag={etag}&timeout_sec=120", headers=FLAVOR,
            timeout=150)

    t = threading.Thread(target=poll)
    t.start()
    assert demo_sim.wait_for(lambda s: s.held_polls() == 1, timeout=30)
    assert "r" not in result  # held
    demo_sim.set("instance/attributes/ssh-keys", "alice:ssh-ed25519 AAAANEW alice")
    t.join(30)  # released by the change, long before the 120 s timeout
    r = result["r"]
    assert r.status_code == 200
    assert r.headers["ETag"] != etag
    assert r.json()["ssh-keys"] == "alice:ssh-ed25519 AAAANEW alice"


def test_long_poll_timeout_returns_same_etag(demo_sim: Simulator, http: requests.Session) -> None:
    url = demo_sim.url() + "instance/attributes/"
    etag = http.get(url, headers=FLAVOR).headers["ETag"]
    t = time.monotonic()
    r = http.get(f"{url}?wait_for_change=true&last_etag={etag}&timeout_sec=1", headers=FLAVOR)
    # held for the timeout, then answered (not held for ever): generous upper bound
    assert 0.9 <= time.monotonic() - t < 30
    assert r.status_code == 200
    assert r.headers["ETag"] == etag


def test_unrelated_change_does_not_release(demo_sim: Simulator, http: requests.Session) -> None:
    url = demo_sim.url() + "instance/attributes/"
    etag = http.get(url, headers=FLAVOR).headers["ETag"]
    timer = threading.Timer(0.2, demo_sim.set, ("instance/network-interfaces/0/mtu", 1500))
    timer.start()
    t = time.monotonic()
    r = http.get(f"{url}?wait_for_change=true&last_etag={etag}&timeout_sec=1", headers=FLAVOR)
    assert time.monotonic() - t >= 0.9
    assert r.headers["ETag"] == etag


def test_guest_attributes_do_not_move_attribute_etag(
    demo_sim: Simulator, http: requests.Session,
) -> None:
    attrs = demo_sim.url() + "instance/attributes/"
    before = http.get(attrs, headers=FLAVOR).headers["ETag"]
    put = http.put(demo_sim.url() + "instance/guest-attributes/hostkeys/ssh-ed25519",
                   data="AAAAC3NzaC1lZDI1NTE5AAAAIhost", headers=FLAVOR)
    assert put.status_code == 200
    got = http.get(demo_sim.url() + "instance/guest-attributes/hostkeys/ssh-ed25519",
                   headers=FLAVOR)
    assert got.text == "AAAAC3NzaC1lZDI1NTE5AAAAIhost"
    assert http.get(attrs, headers=FLAVOR).headers["ETag"] == before
    assert demo_sim.guest_attributes() == {"hostkeys/ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIhost"}
    bad = http.put(demo_sim.url() + "instance/guest-attributes/only-namespace", data="x",
                   headers=FLAVOR)
    assert bad.status_code == 400
    no_flavor = http.put(demo_sim.url() + "instance/guest-attributes/a/b", data="x")
    assert no_flavor.status_code == 403
    elsewhere = http.put(demo_sim.url() + "instance/attributes/x", data="x", headers=FLAVOR)
    assert elsewhere.status_code == 405


def test_keep_alive_single_write_no_stall(demo_sim: Simulator) -> None:
    # 50 sequential requests on one kept-alive connection: a Nagle/delayed-ACK
    # stall would cost at least 40 ms each (Linux's shortest delayed ACK), every time.
    # The median is what is bounded: a loaded machine slows some requests, not half.
    conn = http.client.HTTPConnection("127.0.0.1", demo_sim.port)
    took: list[float] = []
    for _ in range(50):
        t = time.monotonic()
        conn.request("GET", "/computeMetadata/v1/instance/hostname", headers=FLAVOR)
        resp = conn.getresponse()
        assert resp.read() == b"demo-vm.c.demo-project.internal"
        took.append(time.monotonic() - t)
    conn.close()
    assert statistics.median(took) < 0.02, sorted(took)


def test_fixed_port_binding() -> None:
    with Simulator(None) as first:
        port = first.port
    with Simulator(None, port=port) as again:
        assert again.port == port
        r = requests.get(again.url() + "instance/name", headers=FLAVOR, timeout=5)
        assert r.text == "sim-vm"


def test_request_log(demo_sim: Simulator, http: requests.Session) -> None:
    demo_sim.clear_requests()
    http.get(demo_sim.url() + "instance/name?alt=text", headers=FLAVOR)
    http.get(demo_sim.url() + "instance/name")
    log = demo_sim.requests()
    assert [e["status"] for e in log] == [200, 403]
    first = log[0]
    assert first["method"] == "GET"
    assert first["path"] == "/computeMetadata/v1/instance/name"
    assert first["query"] == {"alt": "text"}
    assert first["headers"]["metadata-flavor"] == "Google"
    assert first["client"].startswith("127.0.0.1:")
    assert first["duration"] >= 0
    assert demo_sim.requests(path="*/instance/name", method="get") == log
    assert demo_sim.requests(path="*/nothing") == []


def test_apply_rerenders_users_and_releases_polls(demo_sim: Simulator,
                                                  http: requests.Session) -> None:
    url = demo_sim.url() + "instance/attributes/"
    etag = http.get(url, headers=FLAVOR).headers["ETag"]
    demo_sim.set("instance/guest-attributes/hostkeys/ssh-rsa", "AAAAhost")
    result: dict[str, requests.Response] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", requests.get(
        f"{url}?recursive=true&wait_for_change=true&last_etag={etag}&timeout_sec=120",
        headers=FLAVOR, timeout=150)))
    t.start()
    assert demo_sim.wait_for(lambda s: s.held_polls() == 1, timeout=30)
    demo_sim.apply({"instance": {"name": "demo-vm"},
                    "users": [{"name": "zed", "keys": ["ssh-ed25519 AAAAzed zed"]}]})
    t.join(30)  # released by apply, long before the 120 s timeout
    assert result["r"].json()["ssh-keys"] == "zed:ssh-ed25519 AAAAzed zed"
    assert demo_sim.guest_attributes() == {"hostkeys/ssh-rsa": "AAAAhost"}


def test_long_poll_on_deleted_key_answers_404(demo_sim: Simulator,
                                              http: requests.Session) -> None:
    url = demo_sim.url() + "instance/attributes/enable-oslogin"
    etag = http.get(url, headers=FLAVOR).headers["ETag"]
    threading.Timer(0.2, demo_sim.delete, ("instance/attributes/enable-oslogin",)).start()
    r = http.get(f"{url}?wait_for_change=true&last_etag={etag}&timeout_sec=10", headers=FLAVOR)
    assert r.status_code == 404


def test_many_long_polls_one_change(demo_sim: Simulator) -> None:
    import asyncio

    import aiohttp

    url = demo_sim.url() + "instance/attributes/"

    async def run() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)  # the default caps a session at 100
        async with aiohttp.ClientSession(headers=FLAVOR, connector=connector) as s:
            async with s.get(url) as first:
                etag = first.headers["ETag"]

            async def poll() -> int:
                async with s.get(f"{url}?wait_for_change=true&last_etag={etag}&timeout_sec=120",
                                 timeout=aiohttp.ClientTimeout(total=150)) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.create_task(poll()) for _ in range(200)]
            for _ in range(600):  # up to 30 s: generous for a loaded 2-core machine
                if demo_sim.held_polls() == 200:
                    break
                await asyncio.sleep(0.05)
            assert demo_sim.held_polls() == 200
            assert not any(t.done() for t in tasks)
            await asyncio.to_thread(demo_sim.set, "instance/attributes/x", "1")
            # released by the change, long before their 120 s timeout
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

    assert asyncio.run(run()) == [200] * 200


def test_disconnected_pollers_are_forgotten(demo_sim: Simulator) -> None:
    import socket

    url_path = "/computeMetadata/v1/instance/attributes/"
    etag = requests.get(demo_sim.url() + "instance/attributes/", headers=FLAVOR,
                        timeout=5).headers["ETag"]
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", demo_sim.port), timeout=5)
        s.sendall(f"GET {url_path}?wait_for_change=true&last_etag={etag} HTTP/1.1\r\n"
                  "Host: x\r\nMetadata-Flavor: Google\r\n\r\n".encode())
        socks.append(s)
    assert demo_sim.wait_for(lambda sim: sim.held_polls() == 50, timeout=30)
    for s in socks:
        s.close()
    assert demo_sim.wait_for(lambda sim: sim.held_polls() == 0, timeout=30)
    outcomes = {e["outcome"] for e in demo_sim.requests(path=url_path)}
    assert "client-closed" in outcomes


def test_v1_without_slash_redirects(demo_sim: Simulator, http: requests.Session) -> None:
    base = f"http://127.0.0.1:{demo_sim.port}/computeMetadata"
    r = http.get(base + "/v1?recursive=true", headers=FLAVOR, allow_redirects=False)
    assert r.status_code == 301
    assert r.headers["Location"] == "/computeMetadata/v1/?recursive=true"
    assert http.get(base + "/", headers=FLAVOR).text == "v1/\n"
