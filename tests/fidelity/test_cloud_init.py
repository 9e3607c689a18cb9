"""Debian's cloud-init 22.4.2 datasources read the simulator and agree on one VM.

Each datasource class of the real cloud-init runs in the chroot (``cloudinit_probe.py``),
with the DMI identity its platform check looks for, in the private network namespace
where 169.254.169.254 is the simulator.  What cloud-init concluded (instance id,
hostname, SSH keys) is compared with the scenario, and across datasources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod

from .conftest import (
    HERE,
    INSTANCE_ID,
    KEY_ALICE,
    KEY_BOB,
    copy_into,
    scenario,
    start_simulator,
)

# One xdist group per module: its tests share one chroot, simulator and running peer
# (module fixtures), and must not be spread over workers that would each build them.
pytestmark = [
    pytest.mark.fidelity,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.xdist_group("fidelity-cloud-init"),
]

PROBE = "/root/cloudinit_probe.py"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
CONFIG_DRIVE_DIR = "/var/lib/cloud/seed/config_drive"

# The simulator platform each datasource reads, and the DMI identity (what
# /sys/class/dmi/id shows) that makes cloud-init believe it runs on that cloud.
DATASOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "GCE": (
        "gce",
        {
            "product_name": "Google Compute Engine",
            "sys_vendor": "Google",
            "product_serial": "GoogleCloud-FIDELITY",
        },
    ),
    "GCE:read_md": ("gce", {}),
    "Ec2": (
        "ec2",
        {
            "sys_vendor": "Amazon EC2",
            "product_name": "t3.micro",
            "product_uuid": "ec2e1916-9099-7caf-fd21-012345abcdef",
            "product_serial": "ec2e1916-9099-7caf-fd21-012345abcdef",
        },
    ),
    "OpenStack": ("openstack", {"product_name": "OpenStack Nova", "sys_vendor": "OpenStack Foundation"}),
    "DigitalOcean": (
        "digitalocean",
        {"sys_vendor": "DigitalOcean", "product_name": "Droplet", "product_serial": INSTANCE_ID},
    ),
    "NoCloud": ("nocloud", {"product_name": "Standard PC (Q35 + ICH9, 2009)", "sys_vendor": "QEMU"}),
    "NoCloud:net": ("nocloud", {"product_name": "Standard PC (Q35 + ICH9, 2009)", "sys_vendor": "QEMU"}),
    # OpenStack's config drive, read from the seed dir cloud-init also accepts (this
    # kernel has no iso9660 driver to mount the simulator's ISO itself).
    "ConfigDrive": ("configdrive", {"product_name": "OpenStack Nova", "sys_vendor": "OpenStack Foundation"}),
}

SCENARIO_KEYS = sorted(" ".join(k.split()[:2]) for k in (KEY_ALICE, KEY_BOB))


def _available_platforms() -> set[str]:
    try:
        from guestsim.registry import PLATFORMS
    except ImportError:
        return set()
    return set(PLATFORMS)


def write_nocloud_seed(scn: dict[str, Any], dest: Path) -> bool:
    """Write the simulator's NoCloud seed directory for ``scn`` into ``dest``.

    Uses the simulator's own builder, never a copy of ours: the point is to test what it
    produces.  False when the simulator has no such builder (yet).
    """
    try:
        from guestsim.media import build_media
    except ImportError:
        return False
    try:
        build_media("nocloud-dir", scn, dest)
    except ValueError:
        return False
    return True


def write_config_drive(scn: dict[str, Any], dest: Path) -> bool:
    """The files of the simulator's config-drive image, laid out as a directory."""
    try:
        from guestsim.media.configdrive import config_drive_files
        from guestsim.scenario import Scenario, load_scenario
    except ImportError:
        return False
    loaded = load_scenario(scn)
    assert isinstance(loaded, Scenario)
    for name, content in config_drive_files(loaded).items():
        target = dest / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return True


@dataclass
class CloudInitEnv:
    sim: Any
    root: chroot_mod.Chroot
    net: netns_mod.MetadataNetwork
    platforms: set[str]
    results: dict[str, dict[str, Any]]
    # What the simulator itself serves as each platform's instance id.
    served_ids: dict[str, str]

    def probe(self, datasource: str) -> dict[str, Any]:
        if datasource in self.results:
            return self.results[datasource]
        _platform, dmi = DATASOURCES[datasource]
        if datasource == "DigitalOcean":
            # A droplet's SMBIOS serial is its droplet id; cloud-init reads it from DMI.
            dmi = {**dmi, "product_serial": self.served_ids.get(datasource, "")}
        # cloud-init caches what it found under /var/lib/cloud and /run/cloud-init; each
        # datasource starts from none, as on a first boot.
        for leftover in ("/var/lib/cloud/instance", "/var/lib/cloud/instances", "/var/lib/cloud/data"):
            path = self.root.path(leftover)
            if path.is_symlink() or path.is_file():
                path.unlink()
        self.sim.clear_requests()
        proc = self.root.run(["python3", PROBE, datasource], netns=self.net.guest_ns, dmi=dmi, timeout=120)
        requests = [
            f"{r['method']} {r['path']} {r.get('query') or ''} -> {r['status']}" for r in self.sim.requests()
        ]
        try:
            result: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            result = {"found": False, "error": f"probe exited {proc.returncode}"}
        result["_stderr"] = proc.stderr[-6000:]
        result["_requests"] = requests
        result["_raw_requests"] = self.sim.requests()
        self.results[datasource] = result
        return result


def served_ids(sim: Any, platforms: set[str]) -> dict[str, str]:
    ids = {"GCE": INSTANCE_ID, "GCE:read_md": INSTANCE_ID}
    if "ec2" in platforms:
        ids["Ec2"] = str(sim.get("meta-data/instance-id", platform="ec2"))
    if "openstack" in platforms:
        meta = sim.get("meta_data.json", platform="openstack")
        ids["OpenStack"] = ids["ConfigDrive"] = str(
            (json.loads(meta) if isinstance(meta, str) else meta)["uuid"]
        )
    if "nocloud" in platforms:
        meta = yaml.safe_load(str(sim.get("meta-data", platform="nocloud")))
        ids["NoCloud"] = ids["NoCloud:net"] = str(meta["instance-id"])
    if "digitalocean" in platforms:
        ids["DigitalOcean"] = str(sim.get("droplet_id", platform="digitalocean"))
    return ids


@pytest.fixture(scope="module")
def cloud_init(
    peer_root: chroot_mod.Chroot, metadata_net: netns_mod.MetadataNetwork
) -> Iterator[CloudInitEnv]:
    available = _available_platforms()
    wanted = tuple(p for p in ("gce", "ec2", "openstack", "digitalocean", "nocloud") if p in available)
    try:  # a platform registered but not importable yet counts as missing
        from guestsim.registry import platform_class

        for p in wanted:
            try:
                platform_class(p)
            except (ImportError, AttributeError):
                available.discard(p)
    except ImportError:
        pass
    wanted = tuple(p for p in wanted if p in available)
    sim = start_simulator(wanted)
    try:
        metadata_net.forward_to("127.0.0.1", sim.port)
        copy_into(peer_root, HERE / "cloudinit_probe.py", PROBE)
        if not write_nocloud_seed(scenario(), peer_root.path(SEED_DIR)):
            available.discard("nocloud")
        if write_config_drive(scenario(), peer_root.path(CONFIG_DRIVE_DIR)):
            available.add("configdrive")
        yield CloudInitEnv(sim, peer_root, metadata_net, available, {}, served_ids(sim, available))
    finally:
        sim.stop()


def _explain(result: dict[str, Any]) -> str:
    shown = {k: v for k, v in result.items() if not k.startswith("_")}
    return str(
        json.dumps(shown, indent=1)
        + "\nrequests:\n"
        + "\n".join(result["_requests"])
        + "\ncloud-init log (tail):\n"
        + result["_stderr"][-3000:]
    )


def _require_platform(env: CloudInitEnv, datasource: str) -> None:
    platform = DATASOURCES[datasource][0]
    if platform not in env.platforms:
        pytest.xfail(f"the simulator has no {platform!r} platform yet (cloud-init {datasource})")


# The instance id's form each cloud uses, and the short hostname cloud-init derives.
# EC2 names a host after its private IP (ip-10-128-0-2.REGION.compute.internal), as the
# real EC2 does by default; the others use the scenario's name.
ID_FORMS_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ID_FORMS = {
    "GCE": r"\d+",
    "GCE:read_md": r"\d+",
    "Ec2": r"i-[0-9a-f]{17}",
    "OpenStack": ID_FORMS_UUID,
    "DigitalOcean": r"\d+",
    "NoCloud": r"\S+",
    "NoCloud:net": r"\S+",
    "ConfigDrive": ID_FORMS_UUID,
}
HOSTNAMES = {ds: "fidelity-vm" for ds in DATASOURCES} | {"Ec2": "ip-10-128-0-2"}


@pytest.mark.parametrize("datasource", list(DATASOURCES))
def test_datasource_finds_the_vm(cloud_init: CloudInitEnv, datasource: str) -> None:
    _require_platform(cloud_init, datasource)
    result = cloud_init.probe(datasource)
    assert result.get("found"), _explain(result)
    assert result["hostname"] == HOSTNAMES[datasource], _explain(result)
    assert result["keys"] == SCENARIO_KEYS, _explain(result)
    assert re.fullmatch(ID_FORMS[datasource], result["instance_id"]), _explain(result)
    if datasource in cloud_init.served_ids:
        assert result["instance_id"] == cloud_init.served_ids[datasource], _explain(result)
    assert result["userdata"] == scenario()["user_data"], _explain(result)


def test_ec2_uses_imdsv2_tokens(cloud_init: CloudInitEnv) -> None:
    """cloud-init got an IMDSv2 token first and sent it with every later request."""
    _require_platform(cloud_init, "Ec2")
    cloud_init.results.pop("Ec2", None)
    result = cloud_init.probe("Ec2")
    assert result.get("found"), _explain(result)
    reqs = result["_raw_requests"]
    assert reqs[0]["method"] == "PUT" and reqs[0]["path"] == "/latest/api/token"
    assert reqs[0]["status"] == 200
    ttl = int(reqs[0]["headers"]["x-aws-ec2-metadata-token-ttl-seconds"])
    assert 1 <= ttl <= 21600
    later = reqs[1:]
    assert later
    assert all(r["headers"].get("x-aws-ec2-metadata-token") for r in later), _explain(result)
    assert all(r["status"] == 200 for r in later), _explain(result)


def test_gce_datasource_details(cloud_init: CloudInitEnv) -> None:
    """GCE specifics a cloud-init user sees: numeric id, zone, user-data, key owners."""
    result = cloud_init.probe("GCE")
    assert result.get("found"), _explain(result)
    assert result["instance_id"] == INSTANCE_ID
    assert result["local_hostname"] == "fidelity-vm.c.fidelity-proj.internal"
    assert result["availability_zone"] == "us-central1-a"
    assert result["users"] == ["alice", "bob"]
    outside = [line for line in result["_requests"] if "/computeMetadata/v1/" not in line]
    assert not outside, f"cloud-init asked outside computeMetadata: {outside}"


def test_datasources_agree(cloud_init: CloudInitEnv) -> None:
    """Every datasource that found the VM sees the same keys and user-data, and (EC2's
    IP-based name aside) the same hostname."""
    found = {}
    for datasource in DATASOURCES:
        if DATASOURCES[datasource][0] not in cloud_init.platforms:
            continue
        result = cloud_init.probe(datasource)
        if result.get("found"):
            found[datasource] = result
    if len(found) < 3:
        pytest.xfail(
            f"too few datasources to compare: {sorted(found)} "
            f"(simulator platforms: {sorted(cloud_init.platforms)})"
        )
    for field in ("keys", "userdata"):
        values = {ds: json.dumps(r[field]) for ds, r in found.items()}
        assert len(set(values.values())) == 1, f"{field} differs: {values}"
    names = {ds: r["hostname"] for ds, r in found.items() if ds != "Ec2"}
    assert len(set(names.values())) == 1, f"hostname differs: {names}"
