"""Runs INSIDE the chroot with Debian's python3 and cloud-init 22.4.2 (not the test's Python).

Usage: python3 cloudinit_probe.py DATASOURCE   (GCE, GCE:read_md, Ec2, OpenStack,
                                                NoCloud, NoCloud:net, DigitalOcean,
                                                ConfigDrive)

Instantiates cloud-init's own datasource class the way cloud-init's init stage does, lets
it fetch from "the cloud" (the simulator behind 169.254.169.254, or the NoCloud seed dir)
with its own code, and prints one JSON object on stdout with what cloud-init concluded:
instance id, hostname, the public keys, and a few raw fields for diagnosis.  Debug logs
go to stderr so a failing test can show what cloud-init asked for.
"""

import json
import logging
import sys
import traceback

from cloudinit import distros, helpers

# Datasource configs: only the metadata address and short timeouts differ from the
# defaults.  The addresses are the real clouds' ones; inside the test's private network
# namespace they lead to the simulator and nowhere else.
SYS_CFG = {
    "datasource": {
        "Ec2": {"metadata_urls": ["http://169.254.169.254"], "max_wait": 30, "timeout": 5},
        "OpenStack": {"metadata_urls": ["http://169.254.169.254"], "max_wait": 30, "timeout": 5},
        # use_ip4LL would add a 169.254/16 address to the NIC: pointless here.
        "DigitalOcean": {"use_ip4LL": False, "retries": 3, "timeout": 5, "wait_retry": 1},
        "GCE": {"retries": 3, "sec_between_retries": 1},
    },
    "datasource_list": [],
}


def _key_parts(key):
    """'TYPE BLOB' of an authorized_keys-style line (drops options and comment)."""
    words = key.split()
    for i, word in enumerate(words):
        if word.startswith(("ssh-", "ecdsa-", "sk-")) and i + 1 < len(words):
            return f"{word} {words[i + 1]}"
    return key.strip()


def _datasource(name, distro, paths, mode=""):
    SYS_CFG["datasource_list"] = [name, "None"]
    if name == "GCE":
        from cloudinit.sources.DataSourceGCE import DataSourceGCE as cls
    elif name == "Ec2":
        from cloudinit.sources.DataSourceEc2 import DataSourceEc2 as cls
    elif name == "OpenStack":
        from cloudinit.sources.DataSourceOpenStack import DataSourceOpenStack as cls
    elif name == "ConfigDrive":
        from cloudinit.sources.DataSourceConfigDrive import DataSourceConfigDrive as cls
    elif name == "NoCloud" and mode == "net":
        from cloudinit.sources.DataSourceNoCloud import DataSourceNoCloudNet as cls
    elif name == "NoCloud":
        from cloudinit.sources.DataSourceNoCloud import DataSourceNoCloud as cls
    elif name == "DigitalOcean":
        from cloudinit.sources.DataSourceDigitalOcean import DataSourceDigitalOcean as cls
    else:
        raise SystemExit(f"unknown datasource {name}")
    return cls(SYS_CFG, distro, paths)


def _gce_read_md(ds):
    """The module-level fetch without cloud-init's DMI platform check, by IP address."""
    from cloudinit.sources.DataSourceGCE import read_md

    ret = read_md(
        address="http://169.254.169.254/computeMetadata/v1/",
        url_params=ds.get_url_params(),
        platform_check=False,
    )
    if ret["success"]:
        ds.metadata = ret["meta-data"]
        ds.userdata_raw = ret["user-data"]
    else:
        print("read_md:", ret["reason"], file=sys.stderr)
    return ret["success"]


def main():
    name, _, mode = sys.argv[1].partition(":")
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    cloud_dir = "/var/lib/cloud"
    if name == "NoCloud" and mode == "net":
        # NoCloud over HTTP ("ds=nocloud-net;s=URL"): a cloud_dir without the seed dir
        # the local variant reads, so everything must come from the URL.
        cloud_dir = "/var/lib/cloud-net"
        SYS_CFG["datasource"]["NoCloud"] = {"seedfrom": "http://169.254.169.254/nocloud/"}
    paths = helpers.Paths({"cloud_dir": cloud_dir, "run_dir": "/run/cloud-init"})
    distro = distros.fetch("debian")("debian", {}, paths)
    ds = _datasource(name, distro, paths, mode)
    out = {"datasource": sys.argv[1]}
    try:
        # get_data() is the entry point cloud-init's init stage calls: platform check,
        # crawl, parse, and writing instance-data.json under run_dir.
        out["found"] = bool(_gce_read_md(ds) if mode == "read_md" else ds.get_data())
    except Exception:
        out["found"] = False
        out["error"] = traceback.format_exc()
    if out["found"]:
        out["instance_id"] = ds.get_instance_id()
        host = ds.get_hostname(fqdn=False)
        out["hostname"] = getattr(host, "hostname", host)
        md = ds.metadata or {}
        out["local_hostname"] = md.get("local-hostname")
        if name == "GCE":
            # GCE's get_public_ssh_keys() keeps only the 'cloudinit'/default user's keys
            # (its own policy); the datasource's view of all keys is public-keys-data.
            raw = md.get("public-keys-data") or []
            out["users"] = sorted({line.split(":", 1)[0] for line in raw if ":" in line})
            keys = [line.split(":", 1)[1] for line in raw if ":" in line]
        else:
            keys = ds.get_public_ssh_keys() or []
        out["keys"] = sorted({_key_parts(k) for k in keys})
        out["availability_zone"] = getattr(ds, "availability_zone", None)
        out["userdata"] = (
            (ds.get_userdata_raw() or b"").decode("utf-8", "replace")
            if isinstance(ds.get_userdata_raw(), bytes)
            else ds.get_userdata_raw()
        )
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=str)
    print()


if __name__ == "__main__":
    main()
