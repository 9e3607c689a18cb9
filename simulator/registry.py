"""Platform names to classes. Imports are lazy so a GCE-only run never loads
the ISO builders or other platforms' code."""

from __future__ import annotations

import importlib

from .platforms.base import Platform
from .scenario import Scenario
from .simclock import SimClock

PLATFORMS: dict[str, str] = {
    "gce": "guestsim.platforms.gce:GcePlatform",
    "ec2": "guestsim.platforms.ec2:Ec2Platform",
    "openstack": "guestsim.platforms.openstack:OpenStackPlatform",
    "azure": "guestsim.platforms.azure:AzurePlatform",
    "digitalocean": "guestsim.platforms.digitalocean:DigitalOceanPlatform",
    "nocloud": "guestsim.platforms.nocloud:NoCloudPlatform",
    "smartos": "guestsim.platforms.smartos:SmartOsPlatform",
}
ALIASES = {"do": "digitalocean", "aws": "ec2", "google": "gce"}


def platform_class(name: str) -> type[Platform]:
    try:
        target = PLATFORMS[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}") from None
    module, _, attr = target.partition(":")
    cls: type[Platform] = getattr(importlib.import_module(module), attr)
    assert issubclass(cls, Platform)
    return cls


def canonical(name: str) -> str:
    platform_class(name)
    return ALIASES.get(name, name)


def create_platform(name: str, scenario: Scenario, clock: SimClock) -> Platform:
    return platform_class(name)(scenario, clock)
