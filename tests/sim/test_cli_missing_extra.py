"""`guestsim` installed without its `sim` extra says which module is missing, in one line.

The extra's modules are made to fail at import by a directory put first on PYTHONPATH
holding a stand-in (`yaml.py`, ...) that raises what Python raises for an absent module,
so nothing has to be uninstalled from the test's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import DEMO


def _entries() -> list[list[str]]:
    """The console script pip made from pyproject.toml's [project.scripts], and `-m guestsim`."""
    script = Path(sysconfig.get_path("scripts")) / "guestsim"
    console = (
        [str(script)]
        if script.exists()
        # Not installed as a script: exactly what pip's generated script does.
        else [sys.executable, "-c", "import sys\nfrom guestsim.cli import main\nsys.exit(main())"]
    )
    return [console, [sys.executable, "-m", "guestsim"]]


def _without(tmp_path: Path, module: str) -> dict[str, str]:
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    (fakes / f"{module}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fakes), env.get("PYTHONPATH")]))
    return env


def _run(entry: list[str], args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*entry, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("entry", _entries(), ids=["console-script", "python-m"])
@pytest.mark.parametrize(
    ("module", "args", "extra", "named"),
    [
        ("yaml", ["serve", "--scenario", str(DEMO)], "sim", "'yaml' (PyYAML)"),
        ("yaml", ["media", "cpio", "--scenario", str(DEMO), "--out", "out.cpio"], "sim", "'yaml' (PyYAML)"),
        ("pycdlib", ["media", "nocloud-iso", "--scenario", str(DEMO), "--out", "seed.iso"], "sim",
         "'pycdlib'"),
        ("pexpect", ["vm", "--help"], "vm", "'pexpect'"),
    ],
    ids=["serve-yaml", "media-yaml", "media-pycdlib", "vm-pexpect"],
)
def test_a_missing_extra_module_is_one_line_and_exit_2(
    tmp_path: Path, entry: list[str], module: str, args: list[str], extra: str, named: str
) -> None:
    args = [*args, "--state-file", str(tmp_path / "state.json")] if args[0] == "serve" else args
    out = _run(entry, args, _without(tmp_path, module), tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr == (
        f"guestsim: the Python module {named} is not installed; "
        f"install it with: pip install 'guestagent[{extra}]'\n"
    )
    assert out.stdout == ""
    assert not (tmp_path / "state.json").exists()


def test_verbs_that_need_no_extra_still_run_without_it(tmp_path: Path) -> None:
    """Importing the package pulls in nothing of the extra: --help (and the client verbs,
    plain urllib) work where PyYAML is absent."""
    out = _run(_entries()[0], ["--help"], _without(tmp_path, "yaml"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: guestsim" in out.stdout


def test_a_missing_module_of_our_own_is_still_a_traceback(tmp_path: Path) -> None:
    """Only third-party modules are blamed on the extra; a broken guestsim import is a bug
    and keeps its traceback."""
    code = (
        "import sys\n"
        "import guestsim.cli as cli\n"
        "def broken(argv):\n"
        "    raise ModuleNotFoundError(\"No module named 'guestsim.nope'\", name='guestsim.nope')\n"
        "cli._main = broken\n"
        "sys.exit(cli.main([]))\n"
    )
    out = _run([sys.executable, "-c", code], [], dict(os.environ), tmp_path)
    assert out.returncode == 1
    assert "Traceback" in out.stderr
    assert "guestsim.nope" in out.stderr
