"""The README's first command: the simulator on loopback, the agent against a sandbox root.

Starts guestsim with the bundled demo scenario on 127.0.0.1, copies this
machine's account files into a sandbox directory, runs `guestagent run --once
--root SANDBOX` for real (real useradd with --prefix), shows what changed,
then changes metadata live and runs again. The machine's own /etc is never
written and no request leaves loopback.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from guestagent.domain.authorized_keys import split_managed
from guestagent.entrypoints.sandbox import make_sandbox
from guestsim import Simulator

SCENARIO = Path(__file__).resolve().parents[1] / "simulator" / "scenarios" / "demo.yaml"
MARK = "# Added by Google"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def agent(root: Path, url: str, *args: str) -> int:
    cmd = ["guestagent", *args, "--root", str(root), "--metadata-url", url]
    print("$ " + " ".join(cmd))
    done = subprocess.run(
        [sys.executable, "-m", "guestagent", *cmd[1:]], text=True, capture_output=True, check=False
    )
    for line in done.stdout.splitlines():
        print("  " + line)
    for line in done.stderr.splitlines():
        if " WARNING " in line or " ERROR " in line:
            print("  log: " + line.split(" guestagent ", 1)[-1])
    print(f"  (exit {done.returncode})")
    return done.returncode


def owner(path: Path, users: dict[int, str], groups: dict[int, str]) -> str:
    st = path.lstat()
    return f"{stat.filemode(st.st_mode)} {users.get(st.st_uid, st.st_uid)}:{groups.get(st.st_gid, st.st_gid)}"


def show(root: Path, before: set[str]) -> None:
    passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()]
    by_uid = {int(f[2]): f[0] for f in passwd}
    by_uid.update({p.pw_uid: p.pw_name for p in pwd.getpwall() if p.pw_uid not in by_uid})
    by_gid = {
        int(f[2]): f[0] for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    }
    new = [f for f in passwd if f[0] not in before]
    print("users the agent created:" if new else "users the agent created: none")
    for f in new:
        print(f"  {f[0]:8} uid {f[2]:5} home {f[5]:14} shell {f[6]}")
    for line in (root / "etc/group").read_text().splitlines():
        if line.startswith("google-sudoers:"):
            print(f"group google-sudoers: {line.split(':')[3] or '(no members)'}")
    for rel in ("etc/sudoers.d/google_sudoers", "var/lib/google/google_users"):
        path = root / rel
        if path.exists():
            content = path.read_text().strip().replace("\n", " ")
            print(f"  {owner(path, by_uid, by_gid)}  /{rel}: {content}")
    for home in sorted((root / "home").iterdir()):
        keys = home / ".ssh/authorized_keys"
        if keys.exists():
            text = keys.read_text()
            own = sum(1 for line in split_managed(text)[0] if line.strip() and not line.startswith("#"))
            print(f"  {owner(keys.parent, by_uid, by_gid)}  /home/{home.name}/.ssh")
            print(
                f"  {owner(keys, by_uid, by_gid)}  /home/{home.name}/.ssh/authorized_keys: "
                f"{text.count(MARK)} managed, {own} of the user's own"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="/tmp/guestagent-demo", help="sandbox directory (recreated)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "The demo creates real users with useradd --prefix inside a sandbox directory, "
            "which needs root. Run it as root (the machine's own accounts are not touched)."
        )
        return 1
    root = Path(args.root).resolve()
    if root == Path("/"):
        raise SystemExit("refusing to use / as the sandbox")
    shutil.rmtree(root, ignore_errors=True)
    make_sandbox(str(root))
    before = {line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}

    with Simulator(str(SCENARIO), platforms=("gce",), host="127.0.0.1") as sim:
        url = sim.url("gce")
        banner(f"simulator on {url} serving {SCENARIO.name}; sandbox root {root}")
        print("ssh-keys in metadata:")
        for line in str(sim.get("instance/attributes/ssh-keys")).splitlines():
            print(f"  {line[:60]}...")
        banner("first run: provision from metadata")
        agent(root, url, "run", "--once")
        show(root, before)

        banner("bob adds a key by hand; metadata then drops bob and gives alice a second key")
        bob_keys = root / "home/bob/.ssh/authorized_keys"
        keys = str(sim.get("instance/attributes/ssh-keys")).splitlines()
        alice_first = next(line for line in keys if line.startswith("alice:"))
        alice_key = alice_first.split(":", 1)[1]
        bob_keys.write_text(
            f"# bob's laptop, added by hand\n{alice_key.replace('alice@', 'bob@')}\n" + bob_keys.read_text()
        )
        bob_key = next(line for line in keys if line.startswith("bob:")).split(":", 1)[1]
        sim.set("instance/attributes/ssh-keys", f"{alice_first}\nalice:{bob_key}")
        agent(root, url, "run", "--once")
        show(root, before)

        banner("same metadata again: nothing to do, nothing written")
        agent(root, url, "run", "--once")
        print(f"\nThe sandbox stays in {root} for a look around; this machine's /etc was not changed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
