"""Boot one guest by hand against a simulator that is already running.

    guestsim serve --platform gce --scenario my.yaml --port 8080 --control-port 8099 &
    sudo python -m guestsim.vm.run --metadata-port 8080 --ssh-port 2222

Prints how to log in and how to attach to the serial console, then keeps the
VM up until Ctrl-C, when it powers the guest off cleanly (shutdown scripts
run) and removes the VM's files.
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

from guestsim.vm import cache, image, machine, qemu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guestsim vm", description=__doc__)
    parser.add_argument("--metadata-port", type=int, required=True, help="the simulator's port on 127.0.0.1")
    parser.add_argument("--ssh-port", type=int, default=0, help="127.0.0.1 port for SSH (0: free)")
    parser.add_argument("--deb", type=Path, help="guestagent .deb (default: build from checkout)")
    parser.add_argument("--cache-dir", type=Path, default=cache.default_cache_dir())
    parser.add_argument("--runner", choices=("auto", "container", "direct"), default="auto")
    args = parser.parse_args(argv)

    deb = args.deb or image.build_deb_from_checkout(args.cache_dir / "deb")
    paths = image.build_image(args.cache_dir, deb)
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
            machine.Vm(paths, args.metadata_port, runner, ssh_port=args.ssh_port or None)
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
