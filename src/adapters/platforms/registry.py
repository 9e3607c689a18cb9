"""Every platform the agent reads: one line each. Detection tries them in this order.

The registry names platforms without importing them: a platform's modules are
imported only when detection needs them or the platform is chosen, so a VM
carries one platform's transport and parser, not nine (importing all nine cost
the daemon 4.3 MiB and 77 ms of its start on Debian's python3; docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import attrs

from guestagent.adapters.platforms.spec import DmiHint, LocalHint, Probe, ProviderOptions, ProviderSpec

TRANSPORTS = "guestagent.adapters.platforms"
PARSERS = "guestagent.domain.platforms"


@attrs.frozen
class LazyProvider:
    """One registry line: a platform, and which hints its PROVIDER has.

    Its transport, TRANSPORTS.NAME (holding PROVIDER), is imported when detection
    gets to its local or probe hint, or when it is loaded to be opened. Its DMI hint
    is dmi_says_NAME in its pure parser module, PARSERS.NAME, so that reading DMI
    imports no transport. tests/unit/test_registry.py holds each line to its PROVIDER.
    """

    name: str
    has_dmi: bool = False
    has_local: bool = False
    has_probe: bool = False

    def load(self) -> ProviderSpec:
        spec = getattr(importlib.import_module(f"{TRANSPORTS}.{self.name}"), "PROVIDER", None)
        if not isinstance(spec, ProviderSpec) or spec.name != self.name:
            raise ImportError(f"{TRANSPORTS}.{self.name}.PROVIDER is not the {self.name!r} ProviderSpec")
        return spec

    @property
    def dmi(self) -> DmiHint | None:
        return self._dmi if self.has_dmi else None

    @property
    def local(self) -> LocalHint | None:
        return self._local if self.has_local else None

    @property
    def probe(self) -> Probe | None:
        return self._probe if self.has_probe else None

    def _dmi(self, fields: Mapping[str, str]) -> str | None:
        hint: DmiHint = getattr(importlib.import_module(f"{PARSERS}.{self.name}"), f"dmi_says_{self.name}")
        return hint(fields)

    # Detection imports the transport before it asks these (detect._import_hinted); one
    # that fails to import fails here again, in the hint's thread, and is recorded there.
    def _local(self, options: ProviderOptions) -> str | None:
        hint = self.load().local
        return None if hint is None else hint(options)

    def _probe(self, options: ProviderOptions, timeout: float) -> str | None:
        probe = self.load().probe
        return None if probe is None else probe(options, timeout)


PROVIDERS: tuple[LazyProvider, ...] = (
    LazyProvider("gce", has_dmi=True, has_probe=True),
    # Before EC2: Nova serves EC2-style metadata too (i-0000000N ids under /latest/).
    LazyProvider("openstack", has_dmi=True, has_local=True, has_probe=True),
    LazyProvider("ec2", has_dmi=True, has_probe=True),
    # DMI chassis asset tag; locally the provisioning DVD (ovf-env.xml) on an optical drive.
    LazyProvider("azure", has_dmi=True, has_local=True, has_probe=True),
    LazyProvider("nocloud", has_local=True),
    LazyProvider("digitalocean", has_dmi=True, has_probe=True),
    # DMI "SmartDC ..."; locally only a zone's metadata socket (never a bare ttyS1).
    LazyProvider("smartos", has_dmi=True, has_local=True),
    LazyProvider("vmware", has_dmi=True),
    # Local media after NoCloud's: a disk whose LBA 0 is a cpio archive.
    LazyProvider("cpio", has_local=True),
)

NAMES = tuple(entry.name for entry in PROVIDERS)


def provider(name: str) -> ProviderSpec:
    """The named platform's spec, its transport imported; ValueError for an unknown name."""
    for entry in PROVIDERS:
        if entry.name == name:
            return entry.load()
    raise ValueError(f"unknown platform {name!r}; known: auto, {', '.join(NAMES)}")
