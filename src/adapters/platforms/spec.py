"""What a platform's transport module declares: how to open it and how to recognise it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import attrs

from guestagent.domain.config import Config
from guestagent.ports.metadata import MetadataSource

if TYPE_CHECKING:
    from guestagent.ports.netlink import Netlink


@attrs.frozen
class ProviderOptions:
    """What opening or probing a provider may depend on."""

    # --metadata-url: the service's base address; None means the platform's own default.
    url: str | None = None
    # Local media (seed directories, volumes, DMI, the kernel command line) are read under it.
    root: str = "/"
    config: Config = attrs.field(factory=Config)
    backoff_max: float = 30.0
    # Opens the kernel's links for a provider that must configure the network to reach its
    # metadata service (DigitalOcean's link-local bootstrap); None: it may not (sandbox root).
    netlink: Callable[[], Netlink] | None = None


# The three hints detection asks, in this order (see ProviderSpec).
DmiHint = Callable[[Mapping[str, str]], str | None]
LocalHint = Callable[[ProviderOptions], str | None]
Probe = Callable[[ProviderOptions, float], str | None]


@attrs.frozen
class ProviderSpec:
    """One platform, as the registry and detection see it.

    Detection asks, in this order and each bounded: `dmi` (pure: the DMI
    fields -> a reason, or None), `local` (media on this machine -> a reason,
    or None), then `probe` (a network request within `timeout` seconds -> a
    reason, or None).
    """

    name: str
    open: Callable[[ProviderOptions], MetadataSource]
    default_url: str | None = None
    dmi: DmiHint | None = None
    local: LocalHint | None = None
    probe: Probe | None = None
    # The source also implements ports.metadata.GuestAttributes (a write-back channel).
    guest_attributes: bool = False

    def load(self) -> ProviderSpec:
        """Itself: a spec is loaded already (see Provider)."""
        return self


class Provider(Protocol):
    """A platform as detection sees it: a ProviderSpec, or a registry line that imports
    the platform's modules only once they are needed (registry.LazyProvider)."""

    @property
    def name(self) -> str: ...

    @property
    def dmi(self) -> DmiHint | None: ...

    @property
    def local(self) -> LocalHint | None: ...

    @property
    def probe(self) -> Probe | None: ...

    def load(self) -> ProviderSpec:
        """The platform's ProviderSpec, its transport imported."""
        ...
