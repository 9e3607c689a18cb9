"""Every platform the agent reads: one line each. Detection tries them in this order."""

from __future__ import annotations

from guestagent.adapters.platforms import (
    azure,
    cpio,
    digitalocean,
    ec2,
    gce,
    nocloud,
    openstack,
    smartos,
    vmware,
)
from guestagent.adapters.platforms.spec import ProviderSpec

PROVIDERS: tuple[ProviderSpec, ...] = (
    gce.PROVIDER,
    # Before EC2: Nova serves EC2-style metadata too (i-0000000N ids under /latest/).
    openstack.PROVIDER,
    ec2.PROVIDER,
    # DMI chassis asset tag; locally the provisioning DVD (ovf-env.xml) on an optical drive.
    azure.PROVIDER,
    nocloud.PROVIDER,
    digitalocean.PROVIDER,
    # DMI "SmartDC ..."; locally only a zone's metadata socket (never a bare ttyS1).
    smartos.PROVIDER,
    vmware.PROVIDER,
    # Local media after NoCloud's: a disk whose LBA 0 is a cpio archive.
    cpio.PROVIDER,
)


def provider(name: str) -> ProviderSpec:
    for spec in PROVIDERS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in PROVIDERS)
    raise ValueError(f"unknown platform {name!r}; known: auto, {known}")
