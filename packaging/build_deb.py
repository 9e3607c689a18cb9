"""Build the guestagent .deb from the source tree with Debian's own tooling.

Usage: python packaging/build_deb.py [--out DIR]   (prints the .deb's path)

Only the agent (src/, imported as `guestagent`) goes in; the simulator never
does. The tree is staged in a temporary directory shaped like a Debian source
package (the import-name folder, the launcher, the units, debian/) and built
with `dpkg-buildpackage -b`. The changelog date is fixed, so SOURCE_DATE_EPOCH
is too and the same sources give a byte-identical .deb: the VM image cache
keys on the .deb's hash and reuses the image when nothing changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
CHANGELOG_DATE = "Mon, 02 Nov 2026 00:00:00 +0000"


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _ignore_caches(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"__pycache__", ".mypy_cache"} or n.endswith((".pyc", ".pyo"))}


def stage(workdir: Path, version: str) -> Path:
    tree = workdir / f"guestagent-{version}"
    shutil.copytree(REPO / "src", tree / "guestagent", ignore=_ignore_caches)
    for part in ("debian", "systemd", "bin"):
        shutil.copytree(PACKAGING / part, tree / part)
    shutil.copy2(PACKAGING / "instance_configs.cfg", tree / "instance_configs.cfg")
    (tree / "debian" / "changelog").write_text(
        f"guestagent ({version}) unstable; urgency=medium\n\n"
        "  * Built from the source tree by packaging/build_deb.py.\n\n"
        f" -- guestagent developers <guestagent@localhost>  {CHANGELOG_DATE}\n"
    )
    # Fixed mtimes: the build is reproducible whatever the checkout's times are.
    epoch = 1793577600  # CHANGELOG_DATE
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    return tree


def build(out_dir: Path) -> Path:
    version = project_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guestagent-deb-") as tmp:
        tree = stage(Path(tmp), version)
        # -b: binary only; -us -uc: unsigned; fakeroot so that a non-root user
        # gets root-owned files in the package too.
        cmd = ["dpkg-buildpackage", "-b", "-us", "-uc"]
        if os.geteuid() != 0:
            cmd.append("-rfakeroot")
        subprocess.run(cmd, cwd=tree, check=True, stdout=sys.stderr)
        built = next(Path(tmp).glob("guestagent_*_all.deb"))
        final = out_dir / built.name
        shutil.copy2(built, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
