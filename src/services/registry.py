"""The subsystems the agent runs, in the order a pass runs them."""

from __future__ import annotations

from guestagent.services.subsystem import Subsystem

# Subsystems in one lane run in this order; lanes run side by side (see Scheduler).
# Accounts, OS Login and Azure's provisioning share a lane: they decide who may log in, and
# Azure reports Ready only once the admin's keys are in place. Hostname comes after Azure's
# provisioning, which reads a hostname changed by hand ([Azure] monitor_hostname) before the
# hostname subsystem writes the metadata's: in lanes side by side the two raced. Static networking,
# NICs and routes share one: all three write the kernel's tables, static addresses must be
# on a link before nics looks for IPv4 on it, and a route needs its link up.
# First-boot scripts run in a pass of their own after READY (they are `after_ready`), so
# a long script never holds sshd back; by then the users they may need exist. The slow host
# key types (RSA) are made after READY too, after the instance setup that recorded them.
LANES = (
    ("instance_setup", "host_keys"),
    ("accounts", "oslogin", "azure_provisioning", "hostname"),
    ("network", "nics", "routes"),
    ("clock",),
    ("firstboot",),
    ("disks",),
)


def all_subsystems() -> list[Subsystem]:
    # Fresh instances each call: subsystems keep per-process memory (what was logged,
    # the last clock token), and an embedding program may want its own set.
    from guestagent.services.accounts import AccountsSubsystem
    from guestagent.services.azure_provisioning import AzureProvisioningSubsystem
    from guestagent.services.clock import ClockSubsystem
    from guestagent.services.disks import DisksSubsystem
    from guestagent.services.firstboot import FirstBootSubsystem
    from guestagent.services.hostname import HostnameSubsystem
    from guestagent.services.instance_setup import DeferredHostKeysSubsystem, InstanceSetupSubsystem
    from guestagent.services.metadata_firewall import MetadataFirewallSubsystem
    from guestagent.services.network import NetworkSubsystem
    from guestagent.services.nics import NicsSubsystem
    from guestagent.services.oslogin import OsLoginSubsystem
    from guestagent.services.routes import RoutesSubsystem

    return [
        InstanceSetupSubsystem(),
        DeferredHostKeysSubsystem(),
        AccountsSubsystem(),
        OsLoginSubsystem(),
        AzureProvisioningSubsystem(),
        NetworkSubsystem(),
        NicsSubsystem(),
        RoutesSubsystem(),
        HostnameSubsystem(),
        ClockSubsystem(),
        FirstBootSubsystem(),
        DisksSubsystem(),
        MetadataFirewallSubsystem(),
    ]
