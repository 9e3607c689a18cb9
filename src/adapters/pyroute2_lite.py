"""pyroute2's IPRoute without the rest of pyroute2: an import-cost measure only.

`import pyroute2` runs the package's __init__, which imports every public class of
the library (NDB with sqlite3 and asyncio, IPDB, nftables, ethtool, conntrack...;
0.7 loads them all through its entry points) although the agent only ever uses
IPRoute. Measured on Debian 12 (python3-pyroute2 0.7.2, /usr/bin/python3), for
IPRoute plus one dump: 14.1 MiB RSS and 265 modules the ordinary way, 6.1 MiB and
152 modules this way (`nox -s bench`, docs/benchmarks.md).

The package is entered as an empty module object pointing at pyroute2's own
directory, so `pyroute2.iproute` and `pyroute2.netlink.exceptions` import as they
always do while the package __init__ does not run. Anyone who then asks the
package for a name it lacks (`from pyroute2 import NDB`) gets the real __init__
run into it at that moment. Any failure falls back to the ordinary import.

0.7's IPRoute also mixes in `pyroute2.lab.LAB_API`, a hook for the mocks of its
documentation's examples, whose module imports unittest.mock and with it asyncio,
unittest, pprint, difflib...: 2.5 MiB RSS, 45 modules and ~90 ms more on Debian 12.
Switched off (its `use_mock` is False unless a lab sets it), LAB_API only passes
__init__ on, so a stand-in that does just that is entered in its place. 0.9 has
no such module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_loaded: tuple[Any, Any] | None = None


def iproute() -> tuple[Any, Any]:
    """(pyroute2's IPRoute class, its NetlinkError)."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def _load() -> tuple[Any, Any]:
    if "pyroute2" not in sys.modules:
        try:
            return _without_package_init()
        except Exception:
            # A pyroute2 this does not fit: forget what was loaded, import it the usual way.
            for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                del sys.modules[name]
    from pyroute2 import IPRoute, NetlinkError

    return IPRoute, NetlinkError


def _without_package_init() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ImportError("pyroute2 is not an ordinary package here")
    loader = spec.loader
    package = types.ModuleType("pyroute2")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "pyroute2"

    def complete(name: str) -> Any:
        # `from pyroute2 import common` asks for the attribute before it imports the
        # submodule: a submodule (or a dunder probe) is not a reason to load everything.
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        # Someone wants more of pyroute2 than IPRoute: run its real __init__ now.
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package
    if "pyroute2.lab" not in sys.modules and importlib.util.find_spec("pyroute2.lab") is not None:
        sys.modules["pyroute2.lab"] = _lab_stand_in()
    linux = importlib.import_module("pyroute2.iproute")
    exceptions = importlib.import_module("pyroute2.netlink.exceptions")
    ipr: Any = linux.IPRoute
    error: Any = exceptions.NetlinkError
    return ipr, error


class _LabApi:
    """pyroute2.lab.LAB_API with its mocks off: a mixin that only passes __init__ on."""

    def __init__(self, *argv: Any, **kwarg: Any) -> None:
        super().__init__(*argv, **kwarg)


def _lab_stand_in() -> types.ModuleType:
    lab = types.ModuleType("pyroute2.lab", "pyroute2.lab without unittest.mock (see pyroute2_lite)")
    lab.LAB_API = _LabApi  # type: ignore[attr-defined]
    lab.registry = []  # type: ignore[attr-defined]
    lab.use_mock = False  # type: ignore[attr-defined]
    return lab
