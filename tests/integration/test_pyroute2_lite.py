"""pyroute2_lite against a stand-in pyroute2 laid out like Debian 12's 0.7: IPRoute is
imported without the package __init__ and without pyroute2.lab's unittest.mock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FILES = {
    # Either of these running means the agent paid for what it never uses.
    "pyroute2/__init__.py": "raise AssertionError('the package __init__ ran')\n",
    "pyroute2/lab.py": "raise AssertionError('pyroute2.lab ran (unittest.mock)')\n",
    "pyroute2/netlink/__init__.py": "",
    "pyroute2/netlink/exceptions.py": "class NetlinkError(Exception):\n    pass\n",
    "pyroute2/iproute/__init__.py": textwrap.dedent(
        """
        from pyroute2.lab import LAB_API

        class Socket:
            def __init__(self, *argv, **kwarg):
                self.opened = (argv, kwarg)

        class IPRoute(LAB_API, Socket):
            pass
        """
    ),
}

PROGRAM = textwrap.dedent(
    """
    import sys
    from guestagent.adapters.pyroute2_lite import iproute
    IPRoute, NetlinkError = iproute()
    ipr = IPRoute(netns="x", flags=0)
    print(ipr.opened, NetlinkError.__module__, "unittest" in sys.modules)
    """
)


def run(packages: Path) -> str:
    env_path = f"{packages}:{':'.join(p for p in sys.path if p)}"
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_iproute_without_the_package_init_or_the_lab_mocks(packages: Path) -> None:
    assert run(packages) == "((), {'netns': 'x', 'flags': 0}) pyroute2.netlink.exceptions False"


def test_a_pyroute2_without_a_lab_module_works_the_same(packages: Path) -> None:
    (packages / "pyroute2/lab.py").unlink()
    (packages / "pyroute2/iproute/__init__.py").write_text(
        "class IPRoute:\n    def __init__(self, *argv, **kwarg):\n        self.opened = (argv, kwarg)\n"
    )
    assert run(packages) == "((), {'netns': 'x', 'flags': 0}) pyroute2.netlink.exceptions False"
