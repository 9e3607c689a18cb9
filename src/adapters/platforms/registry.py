"""Every platform the agent reads: one line each. Detection tries them in this order."""

from __future__ import annotations

from guestagent.adapters.platforms import ec2, gce, nocloud
from guestagent.adapters.platforms.spec import ProviderSpec

PROVIDERS: tuple[ProviderSpec, ...] = (
    gce.PROVIDER,
    ec2.PROVIDER,
    nocloud.PROVIDER,
)


def provider(name: str) -> ProviderSpec:
    for spec in PROVIDERS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in PROVIDERS)
    raise ValueError(f"unknown platform {name!r}; known: auto, {known}")
