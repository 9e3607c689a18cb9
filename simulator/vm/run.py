"""Boot one guest by hand against a simulator that is already running.

    guestsim serve --platform gce --scenario my.yaml --port 8080 --control-port 8099 &
    sudo python -m guestsim.vm.run --metadata-port 8080 --ssh-port 2222

A NoCloud guest reads a cidata ISO instead of the network (no metadata port):

    guestsim media nocloud-iso --scenario my.yaml --out /tmp/cidata.iso
    sudo python -m guestsim.vm.run --cdrom /tmp/cidata.iso

The illumos CPIO device is an extra read-only disk (/dev/vdb); SmartOS's
metadata is a second serial port (COM2, /dev/ttyS1) joined to the simulator's
socket; a guest that configures its own address from metadata (DigitalOcean,
SmartOS with static NICs) boots the image without DHCP on eth0 and a slirp
network holding that address:

    guestsim media cpio --scenario my.yaml --out /tmp/md.img
    sudo python -m guestsim.vm.run --disk /tmp/md.img --uuid 0c9e5a4e-2f7b-4d3a-8b61-5e4f3a2b1c0d
    sudo python -m guestsim.vm.run --smbios smartos --serial-socket SOCK \
        --image-network static --slirp 10.128.0.0/20,10.128.0.1,10.128.0.2
    sudo python -m guestsim.vm.run --metadata-port 8080 --smbios digitalocean \
        --image-network static --slirp public

Azure: the provisioning DVD on the CD-ROM, IMDS and the WireServer
(168.63.129.16:80, `--wireserver`) both forwarded to the simulator, a
resource disk the guest may write (`--writable-disk`), a root disk larger
than the image, and an image carrying /etc/waagent.conf:

    guestsim media azure-ovf-udf --scenario az.yaml --out /tmp/ovf.udf
    sudo python -m guestsim.vm.run --metadata-port 8080 --smbios azure --cdrom /tmp/ovf.udf \
        --wireserver --slirp azure --writable-disk /tmp/res.img --root-size 3G \
        --image-file etc/waagent.conf=/tmp/waagent.conf

`--smbios NAME` gives the guest that cloud's DMI identity (the agent
detects its platform from it), `--kernel-arg WORD` adds to the kernel command
line. Prints how to log in and how to attach to the serial console, then
keeps the VM up until Ctrl-C, when it powers the guest off cleanly (shutdown
scripts run) and removes the VM's files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import attrs

from guestsim.vm import cache, image, machine, qemu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guestsim vm", description=__doc__)
    parser.add_argument(
        "--metadata-port",
        type=int,
        help="the simulator's port on 127.0.0.1, the guest's 169.254.169.254:80 (default: no forward)",
    )
    parser.add_argument(
        "--smbios", choices=sorted(qemu.SMBIOS), help="give the guest this cloud's DMI identity"
    )
    parser.add_argument("--cdrom", type=Path, help="an ISO attached as the guest's CD-ROM (/dev/sr0)")
    parser.add_argument(
        "--kernel-arg",
        action="append",
        default=[],
        metavar="WORD",
        help="add WORD to the kernel command line",
    )
    parser.add_argument(
        "--uuid", default="", help="the SMBIOS system UUID (product_uuid; the CPIO device's instance id)"
    )
    parser.add_argument(
        "--disk",
        type=Path,
        action="append",
        default=[],
        help="a raw image attached read-only as the next virtio disk (/dev/vdb, ...)",
    )
    parser.add_argument(
        "--writable-disk",
        type=Path,
        action="append",
        default=[],
        help="a raw image the guest may write, attached after the --disk ones (a copy is used)",
    )
    parser.add_argument(
        "--root-size", default=None, help="the root disk's size when larger than the image (e.g. 3G)"
    )
    parser.add_argument(
        "--wireserver",
        action="store_true",
        help=f"also forward {qemu.WIRESERVER_ADDRESS}:80 (Azure's WireServer) to --metadata-port",
    )
    parser.add_argument(
        "--image-file",
        action="append",
        default=[],
        metavar="DEST=SRC",
        help="bake file SRC into the image at DEST (relative to /; an image variant of its own)",
    )
    parser.add_argument(
        "--serial-socket",
        type=Path,
        action="append",
        default=[],
        metavar="SOCK",
        help="join the next serial port (COM2 = /dev/ttyS1, ...) to this unix socket",
    )
    parser.add_argument(
        "--image-network",
        choices=image.NETWORKS,
        default="dhcp",
        help="static: the image variant with no DHCP on eth0 (the agent configures it)",
    )
    parser.add_argument(
        "--slirp",
        default="",
        metavar="NET,HOST,GUEST|public|azure",
        help="slirp's network, its own address and the guest's (SSH goes there); "
        f"public = {qemu.PUBLIC_NET.net},{qemu.PUBLIC_NET.host},{qemu.PUBLIC_NET.dhcpstart}; "
        f"azure = {qemu.AZURE_NET.net},{qemu.AZURE_NET.host},{qemu.AZURE_NET.dhcpstart}",
    )
    parser.add_argument("--ssh-port", type=int, default=0, help="127.0.0.1 port for SSH (0: free)")
    parser.add_argument("--deb", type=Path, help="guestagent .deb (default: build from checkout)")
    parser.add_argument("--cache-dir", type=Path, default=cache.default_cache_dir())
    parser.add_argument("--runner", choices=("auto", "container", "direct"), default="auto")
    args = parser.parse_args(argv)

    deb = args.deb or image.build_deb_from_checkout(args.cache_dir / "deb")
    files: dict[str, str] = {}
    for item in args.image_file:
        dest, sep, src = item.partition("=")
        if not sep:
            parser.error(f"--image-file {item!r} is not DEST=SRC")
        files[dest] = Path(src).read_text()
    paths = image.build_image(args.cache_dir, deb, network=args.image_network, files=files)
    smbios = qemu.SMBIOS[args.smbios] if args.smbios else None
    if args.uuid:
        smbios = attrs.evolve(smbios or qemu.Smbios(), uuid=args.uuid)
    network = qemu.DEFAULT_NET
    if args.slirp == "public":
        network = qemu.PUBLIC_NET
    elif args.slirp == "azure":
        network = qemu.AZURE_NET
    elif args.slirp:
        net, host, guest = args.slirp.split(",")
        network = qemu.SlirpNet(net=net, host=host, dhcpstart=guest)
    stop = False

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as stack:
        runner: qemu.Runner
        if args.runner == "direct":
            runner = qemu.DirectRunner()
        else:
            if args.runner == "container":
                os.environ[machine.RUNNER_ENV] = "container"
            runner = stack.enter_context(machine.select_runner(args.cache_dir))
        vm = stack.enter_context(
            machine.Vm(
                paths,
                args.metadata_port,
                runner,
                ssh_port=args.ssh_port or None,
                smbios=smbios,
                cdrom=args.cdrom,
                kernel_args=args.kernel_arg,
                disks=[*args.disk, *(qemu.Disk(d, writable=True) for d in args.writable_disk)],
                serial_sockets=args.serial_socket,
                network=network,
                metadata_aliases=[qemu.WIRESERVER_ADDRESS] if args.wireserver else [],
                root_size=args.root_size,
            )
        )
        vm.start()
        print(f"booting ({runner.name} runner); serial log: {vm.files.serial_log}", flush=True)
        print(
            f"console: socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:{vm.files.console_socket}"
            "  (Ctrl-] leaves)",
            flush=True,
        )
        seconds = vm.wait_for_ssh()
        print(f"SSH is up after {seconds:.0f} s:", flush=True)
        print(f"  root:  ssh -i {paths.harness_key} -p {vm.ssh_port} root@127.0.0.1", flush=True)
        print(f"  users: ssh -i YOUR_KEY -p {vm.ssh_port} USER@127.0.0.1", flush=True)
        print("Ctrl-C powers the guest off.", flush=True)
        while not stop and vm.running():
            time.sleep(0.5)
        print("powering off", flush=True)
        vm.poweroff()
    return 0


if __name__ == "__main__":
    sys.exit(main())
