"""`guestsim` command line.

    guestsim serve --platform gce --scenario demo.yaml [--port N] [--control-port M]
    guestsim get [PATH] | set PATH VALUE | delete PATH     (a running `serve`)
    guestsim log [--follow] | fault add PATTERN KIND ... | fault list | fault clear
    guestsim media KIND --scenario FILE --out PATH          (ISO / CPIO / seed dir)

The other verbs find the running server through --control URL, then
$GUESTSIM_CONTROL, then the state file `serve` writes
($XDG_RUNTIME_DIR or /tmp, `guestsim-UID.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .faults import KINDS

DEFAULT_CONTROL_PORT = 8099


def state_file() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"guestsim-{os.getuid()}.json"


# -- serve ---------------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> int:
    from .control import ControlServer
    from .scenario import load_scenario
    from .server import MetadataServer
    from .sim import host_url

    scenario = load_scenario(args.scenario)
    platforms = args.platform or ["gce"]
    server = MetadataServer(scenario, platforms)
    port = await server.start(args.host, args.port)
    await server.open_channels()
    control = ControlServer(server)
    cport = await control.start(args.host, args.control_port)
    base = host_url(args.host, port)
    control_url = host_url(args.host, cport)
    for inst in server.instances:
        ibase = host_url(args.host, inst.port) if inst.port else base
        for name, plat in inst.platforms.items():
            print(f"{inst.name} {name}: {plat.address(ibase)}", flush=True)
    print(f"control: {control_url}", flush=True)
    sfile = Path(args.state_file) if args.state_file else state_file()
    sfile.write_text(json.dumps({"control": control_url, "pid": os.getpid(), "port": port}))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await control.stop()
    await server.close_channels()
    await server.stop()
    with contextlib.suppress(OSError):
        if json.loads(sfile.read_text()).get("pid") == os.getpid():
            sfile.unlink()
    return 0


# -- client verbs --------------------------------------------------------------------

def control_url(args: argparse.Namespace) -> str:
    if args.control:
        return str(args.control).rstrip("/")
    env = os.environ.get("GUESTSIM_CONTROL")
    if env:
        return env.rstrip("/")
    try:
        return str(json.loads(state_file().read_text())["control"])
    except (OSError, ValueError, KeyError):
        return f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}"


def call(args: argparse.Namespace, method: str, path: str, body: bytes | None = None,
         ctype: str = "application/json") -> bytes:
    url = control_url(args) + path
    if not url.startswith(("http://127.", "http://[::1]", "http://localhost")):
        raise SystemExit(f"refusing a non-loopback control URL: {url}")
    req = urllib.request.Request(url, data=body, method=method,  # noqa: S310 - loopback only
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace").strip()
        raise SystemExit(f"guestsim: {err.code}: {detail}") from None
    except urllib.error.URLError as err:
        raise SystemExit(f"guestsim: cannot reach the control API at {url}: {err.reason}") from None


def _scope(args: argparse.Namespace) -> str:
    q = []
    if args.platform:
        q.append(f"platform={args.platform}")
    if args.instance:
        q.append(f"instance={args.instance}")
    return ("?" + "&".join(q)) if q else ""


def _tree_path(path: str) -> str:
    return "/v1/tree/" + path.strip("/")


def cmd_get(args: argparse.Namespace) -> int:
    value = json.loads(call(args, "GET", _tree_path(args.path) + _scope(args)))
    print(value if isinstance(value, str) else json.dumps(value, indent=2))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    raw = Path(args.file).read_text() if args.file else args.value
    if raw is None:
        raise SystemExit("guestsim set: give VALUE or --file")
    if args.json:
        json.loads(raw)  # validate before sending
        call(args, "PUT", _tree_path(args.path) + _scope(args), raw.encode())
    else:
        call(args, "PUT", _tree_path(args.path) + _scope(args), raw.encode(), "text/plain")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    call(args, "DELETE", _tree_path(args.path) + _scope(args))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    print(json.dumps(json.loads(call(args, "GET", "/v1/state" + _scope(args))), indent=2))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    since = 0
    while True:
        data = call(args, "GET", f"/v1/log?since={since}").decode()
        lines = [line for line in data.splitlines() if line]
        for line in lines:
            print(line, flush=True)
        since += len(lines)
        if not args.follow:
            return 0
        time.sleep(0.5)


def cmd_fault(args: argparse.Namespace) -> int:
    if args.fault_cmd == "list":
        print(json.dumps(json.loads(call(args, "GET", "/v1/faults")), indent=2))
    elif args.fault_cmd == "clear":
        call(args, "DELETE", "/v1/faults")
    elif args.fault_cmd == "remove":
        call(args, "DELETE", f"/v1/faults/{args.id}")
    else:
        spec: dict[str, Any] = {"pattern": args.pattern, "kind": args.kind}
        for key in ("count", "status", "delay", "fraction", "period", "down", "platform",
                    "method", "client", "body", "content_type"):
            value = getattr(args, key)
            if value is not None:
                spec[key] = value
        if args.flavor is not None:
            spec["flavor"] = None if args.flavor == "" else args.flavor
        if args.steps:
            spec["steps"] = args.steps.split(",")
        result = json.loads(call(args, "POST", "/v1/faults", json.dumps(spec).encode()))
        print(result["id"])
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    scope = f"?instance={args.instance}" if args.instance else ""
    call(args, "PUT", "/v1/scenario" + scope, Path(args.scenario).read_bytes(),
         "application/yaml")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    call(args, "POST", "/v1/suspend")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    call(args, "POST", "/v1/resume")
    return 0


def cmd_clock(args: argparse.Namespace) -> int:
    body = json.dumps({"advance": args.seconds}).encode()
    print(json.loads(call(args, "POST", "/v1/clock", body))["offset"])
    return 0


def cmd_media(args: argparse.Namespace) -> int:
    from .media import build_media

    out = build_media(args.kind, args.scenario, Path(args.out))
    print(out)
    return 0


# -- parser ----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guestsim", description="Cloud metadata simulator")
    p.add_argument("--control", help="control API URL of a running `guestsim serve`")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the metadata server until SIGINT/SIGTERM")
    s.add_argument("--platform", action="append",
                   help="gce, ec2, openstack, azure, digitalocean (repeatable; default gce)")
    s.add_argument("--scenario", help="scenario YAML/JSON (default: a plain VM)")
    s.add_argument("--host", default="127.0.0.1", help="listen address (keep it loopback)")
    s.add_argument("--port", type=int, default=0, help="metadata port (0: a free port)")
    s.add_argument("--control-port", type=int, default=0, help="control port (0: a free port)")
    s.add_argument("--state-file", help=f"where to record the control URL (default {state_file()})")

    def scoped(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--platform", help="whose tree (default: the first served)")
        sp.add_argument("--instance", help="which VM of a fleet")

    g = sub.add_parser("get", help="print a value or subtree")
    g.add_argument("path", nargs="?", default="")
    scoped(g)
    st = sub.add_parser("set", help="set a value (string, or JSON with --json)")
    st.add_argument("path")
    st.add_argument("value", nargs="?")
    st.add_argument("--json", action="store_true", help="VALUE is JSON")
    st.add_argument("--file", help="read VALUE from a file")
    scoped(st)
    d = sub.add_parser("delete", help="remove a key or subtree")
    d.add_argument("path")
    scoped(d)
    stt = sub.add_parser("state", help="what the guest wrote back (guest attributes, health)")
    scoped(stt)
    lg = sub.add_parser("log", help="request log as JSON lines")
    lg.add_argument("--follow", "-f", action="store_true")
    ap = sub.add_parser("apply", help="replace a VM's scenario (every platform re-renders)")
    ap.add_argument("scenario")
    ap.add_argument("--instance", help="which VM of a fleet")
    sub.add_parser("suspend", help="stop listening on the metadata port (state is kept)")
    sub.add_parser("resume", help="listen again after suspend")
    ck = sub.add_parser("clock", help="advance the simulator's clock (token expiry)")
    ck.add_argument("seconds", type=float)

    f = sub.add_parser("fault", help="inject or clear faults")
    fsub = f.add_subparsers(dest="fault_cmd", required=True)
    fa = fsub.add_parser("add", help="add a fault; prints its id")
    fa.add_argument("pattern", help="fnmatch pattern, e.g. 'instance/*'")
    fa.add_argument("kind", choices=KINDS)
    fa.add_argument("--count", type=int)
    fa.add_argument("--status", type=int)
    fa.add_argument("--delay", type=float)
    fa.add_argument("--fraction", type=float)
    fa.add_argument("--flavor", help="flavor kind: header value ('' removes the header)")
    fa.add_argument("--period", type=float)
    fa.add_argument("--down", choices=("status", "reset", "blackhole"))
    fa.add_argument("--steps", help="sequence kind: e.g. 503,503,reset,ok")
    fa.add_argument("--body", help="body kind: the whole answer (sent 200 with the platform's headers)")
    fa.add_argument("--content-type", help="body kind: its Content-Type (default application/json)")
    fa.add_argument("--platform")
    fa.add_argument("--method")
    fa.add_argument("--client")
    fsub.add_parser("list")
    fsub.add_parser("clear")
    fr = fsub.add_parser("remove")
    fr.add_argument("id", type=int)

    m = sub.add_parser("media", help="build provisioning media from a scenario")
    m.add_argument("kind", choices=("config-drive", "azure-ovf", "azure-ovf-udf", "nocloud-iso",
                                    "nocloud-dir", "cpio"))
    m.add_argument("--scenario")
    m.add_argument("--out", required=True)
    # Listed for --help; main() hands their arguments to guestsim.vm, which parses its own.
    sub.add_parser("image", help="build (or find in the cache) the QEMU guest image: image build [--deb P]")
    sub.add_parser("vm", help="boot one QEMU guest: vm [--metadata-port P] [--smbios gce|ec2] [--cdrom ISO]")
    return p


HANDLERS = {
    "get": cmd_get, "set": cmd_set, "delete": cmd_delete, "state": cmd_state, "log": cmd_log,
    "fault": cmd_fault, "clock": cmd_clock, "media": cmd_media, "apply": cmd_apply,
    "suspend": cmd_suspend, "resume": cmd_resume,
}


#: The extra that brings each third-party module the simulator imports (pyproject.toml);
#: with the distribution's name where it differs from the module's.
EXTRAS = {
    "yaml": ("sim", "PyYAML"), "aiohttp": ("sim", "aiohttp"), "pycdlib": ("sim", "pycdlib"),
    "pexpect": ("vm", "pexpect"), "testcontainers": ("vm", "testcontainers"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line error for a third-party module that is not installed, or None when
    ``exc`` is about a module of our own or of the standard library (a real bug)."""
    top = (exc.name or "").partition(".")[0]
    if not top or top in ("guestsim", "guestagent") or top in sys.stdlib_module_names:
        return None
    extra, dist = EXTRAS.get(top, ("sim", top))
    named = f"'{top}'" if dist == top else f"'{top}' ({dist})"
    return (f"guestsim: the Python module {named} is not installed; "
            f"install it with: pip install 'guestagent[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("image", "vm"):
        # Imported only here: the VM harness pulls in pexpect and testcontainers.
        from .vm import image, run

        return (image.main if words[0] == "image" else run.main)(words[1:])
    args = parser().parse_args(argv)
    if args.cmd == "serve":
        try:
            return asyncio.run(_serve(args))
        except KeyboardInterrupt:
            return 0
    try:
        return HANDLERS[args.cmd](args)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
