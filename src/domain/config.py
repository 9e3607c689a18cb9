"""instance_configs.cfg: typed options, built-in defaults and layering.

Precedence, lowest to highest (each later layer overrides single options of
the earlier ones, never whole sections):

1. built-in defaults (this module)
2. ``instance_configs.cfg.distro``   - what an image builder ships
3. ``instance_configs.cfg.template`` - the old Python agent's user file
4. ``instance_configs.cfg``          - the user's file (Go agent's documented place)

Both user files beat the distro file, so a package update that changes
.distro never overrides a setting a user made. The agent only reads these
files; it never writes merged values back (the old agent did, and users
lost track of which file held their setting).
"""

from __future__ import annotations

import configparser
import math
from collections.abc import Sequence
from typing import Any

import attrs

from guestagent.domain.values import parse_bool

LAYER_SUFFIXES = (".distro", ".template", "")
DEFAULT_CONFIG_PATH = "/etc/default/instance_configs.cfg"


def _opt(default: Any, doc: str) -> Any:
    return attrs.field(default=default, metadata={"doc": doc})


@attrs.frozen
class Accounts:
    deprovision_remove: bool = _opt(
        False, "true deletes a user (userdel -r) when it leaves metadata; false keeps account and home"
    )
    groups: tuple[str, ...] = _opt(
        ("adm", "dip", "docker", "lxd", "plugdev", "video"),
        "comma-separated groups for new users (missing groups are skipped)",
    )
    useradd_cmd: str = _opt("useradd -m -s /bin/bash -p * {user}", "command to create a user")
    userdel_cmd: str = _opt("userdel -r {user}", "command to delete a user")
    usermod_cmd: str = _opt("usermod -G {groups} {user}", "command to set a user's groups")
    gpasswd_add_cmd: str = _opt("gpasswd -a {user} {group}", "command to add a user to a group")
    gpasswd_remove_cmd: str = _opt("gpasswd -d {user} {group}", "command to remove a user from a group")
    groupadd_cmd: str = _opt("groupadd {group}", "command to create a group")
    allowed_system_users: tuple[str, ...] = _opt(
        (), "system accounts (UID below UID_MIN, e.g. root) metadata may manage anyway"
    )
    default_user: str = _opt(
        "",
        "the image's user that receives keys a platform gives without a user name "
        "(EC2, NoCloud, OpenStack...); empty: such keys are refused",
    )
    default_user_groups: tuple[str, ...] = _opt(
        ("adm", "sudo"), "groups the default user is created in (missing groups are skipped)"
    )
    default_user_sudo: bool = _opt(True, "true gives the default user passwordless sudo")


@attrs.frozen
class Core:
    platform: str = _opt(
        "auto",
        "the platform to read: auto (detect it), gce, openstack, ec2, azure, nocloud, digitalocean, "
        "smartos, vmware or cpio",
    )
    detect_timeout: float = _opt(
        10.0, "seconds platform detection may take in all (network probes included)"
    )


@attrs.frozen
class EC2:
    allow_imdsv1: bool = _opt(
        False, "true falls back to IMDSv1 (no session token) when the token PUT gets no answer"
    )
    poll_interval: float = _opt(10.0, "seconds between metadata polls (EC2 has no long poll)")
    token_ttl: int = _opt(21600, "lifetime in seconds asked for each IMDSv2 token (1 to 21600)")


@attrs.frozen
class NoCloud:
    seed_dir: str = _opt("/var/lib/cloud/seed/nocloud", "the seed directory read before any volume")
    poll_interval: float = _opt(
        60.0, "seconds between polls of a ds=nocloud;s=URL seed (local seeds are read once)"
    )


@attrs.frozen
class OpenStack:
    poll_interval: float = _opt(
        60.0,
        "seconds between polls of the OpenStack metadata service (a config drive is read once)",
    )


@attrs.frozen
class Azure:
    provisioning: bool = _opt(
        True,
        "false leaves Azure provisioning (admin password, sshd password logins, root password, "
        "custom data, the Ready report) to another agent (waagent.conf Provisioning.Agent)",
    )
    wireserver: str = _opt(
        "", "the WireServer as HOST or HOST:PORT; empty: DHCP option 245 from the leases, else 168.63.129.16"
    )
    delete_root_password: bool = _opt(False, "true locks root's password when the VM is provisioned")
    decode_custom_data: bool = _opt(
        False, "true saves CustomData decoded; false as the base64 text the DVD carries"
    )
    monitor_hostname: bool = _opt(
        True, "true publishes a hostname changed by hand to Azure's DNS (DHCP send host-name)"
    )
    monitor_hostname_period: float = _opt(30.0, "seconds between hostname checks")
    poll_interval: float = _opt(60.0, "seconds between IMDS polls (Azure's IMDS has no long poll)")
    password_crypt_id: str = _opt("6", "the admin password's hash: 6 (SHA-512) or 5 (SHA-256)")
    password_crypt_salt_length: int = _opt(10, "length of the password hash's random salt (1 to 16)")
    ssh_dir: str = _opt("/etc/ssh", "the directory holding sshd_config")
    ssh_client_alive_interval: int = _opt(
        180, "ClientAliveInterval set in sshd_config at provisioning; 0 leaves it alone"
    )
    http_proxy: str = _opt(
        "", "http://HOST:PORT the WireServer client goes through (IMDS never uses a proxy); empty: none"
    )
    verbose: bool = _opt(False, "true logs at DEBUG, as --log-level DEBUG does")


@attrs.frozen
class DigitalOcean:
    poll_interval: float = _opt(10.0, "seconds between metadata polls (DigitalOcean has no long poll)")
    link_local: bool = _opt(
        True,
        "false never puts the temporary 169.254.0.0/16 address on the first NIC that reaches "
        "the metadata service before the droplet's own addresses are up",
    )


@attrs.frozen
class VMware:
    poll_interval: float = _opt(
        60.0, "seconds between guestinfo reads through vmware-rpctool; 0 reads it once"
    )


@attrs.frozen
class FirstBoot:
    enabled: bool = _opt(True, "false never runs first-boot scripts (the CPIO device's firstboot.sh, ...)")
    run_user_data: bool = _opt(
        False, "true also runs user data that starts with #! as a first-boot script, once per instance"
    )
    timeout: float = _opt(
        0.0, "seconds a first-boot script may run before it is killed (it then runs again); 0: no limit"
    )


@attrs.frozen
class SmartOS:
    device: str = _opt(
        "/dev/ttyS1",
        "the metadata channel: the serial port (KVM/bhyve guests: COM2) or a unix socket "
        "(read under --root; a zone's /native/.zonecontrol/metadata.sock is found by itself)",
    )
    poll_interval: float = _opt(
        30.0, "seconds between metadata reads (SmartOS has no change notification)"
    )


@attrs.frozen
class Daemons:
    accounts_daemon: bool = _opt(True, "false disables accounts and SSH keys")
    clock_skew_daemon: bool = _opt(True, "false disables clock resync on drift-token change")
    network_daemon: bool = _opt(
        True, "false disables NIC setup, forwarded-IP routes and static networking"
    )
    ip_forwarding_daemon: bool = _opt(True, "deprecated: false skips forwarded-IP routes")


@attrs.frozen
class Instance:
    instance_id: str = _opt(
        "", "instance id recorded by the old Python agent; read when /etc/google_instance_id is absent"
    )


@attrs.frozen
class InstanceSetup:
    host_key_types: tuple[str, ...] = _opt(
        ("ecdsa", "ed25519", "rsa"), "SSH host key types generated on first boot"
    )
    optimize_local_ssd: bool = _opt(True, "false skips local SSD tuning")
    network_enabled: bool = _opt(True, "false skips setup that needs metadata (host keys, boto config)")
    set_boto_config: bool = _opt(True, "false skips writing /etc/boto.cfg")
    set_host_keys: bool = _opt(True, "false skips generating host keys on first boot")
    set_multiqueue: bool = _opt(True, "false skips virtio-net multiqueue tuning")
    set_hostname: bool = _opt(True, "false leaves the hostname alone")
    hostname_fqdn: bool = _opt(False, "true sets the full metadata hostname; false its first label")


@attrs.frozen
class IpForwarding:
    ethernet_proto_id: int = _opt(66, "route protocol id marking the agent's routes")
    ip_aliases: bool = _opt(True, "false skips alias IP routes")
    target_instance_ips: bool = _opt(True, "false skips target-instance IP routes")


@attrs.frozen
class MetadataScripts:
    default_shell: str = _opt("/bin/bash", "shell that runs metadata scripts")
    run_dir: str = _opt("", "directory for script temp dirs; empty means the system temp dir")
    startup: bool = _opt(True, "false disables startup scripts")
    shutdown: bool = _opt(True, "false disables shutdown scripts")
    shutdown_timeout: int = _opt(90, "seconds all shutdown scripts together may run")


@attrs.frozen
class NetworkInterfaces:
    setup: bool = _opt(True, "false skips network interface setup")
    ip_forwarding: bool = _opt(True, "false skips forwarded-IP routes")
    dhcp_command: str = _opt(
        "", "command run for each secondary NIC without an IPv4 address; {interface} is its name"
    )


@attrs.frozen
class Network:
    enabled: bool = _opt(
        True, "false leaves static NICs (addresses, routes, MTU) and their DNS to the image"
    )
    dns: str = _opt(
        "auto",
        "how DNS from metadata reaches the resolver: auto (detect), resolved, resolvconf, "
        "file (/etc/resolv.conf) or none",
    )


@attrs.frozen
class OSLogin:
    cert_authentication: bool = _opt(
        False, "true adds TrustedUserCAKeys for OS Login certificates to sshd_config"
    )


@attrs.frozen
class Clock:
    sync_command: str = _opt(
        "/sbin/hwclock --hctosys -u --noadjfile",
        "command run when the platform's clock drift token changes",
    )


@attrs.frozen
class ResourceDisk:
    format: bool = _opt(
        True, "false leaves the platform's resource disk alone: not formatted, mounted or used for swap"
    )
    filesystem: str = _opt(
        "ext4",
        "filesystem made on a fresh resource disk: ext4, ext3, ext2, xfs or btrfs (its mkfs must be "
        "installed); ntfs leaves the disk as the platform made it",
    )
    mount_point: str = _opt("/mnt/resource", "where the resource disk is mounted (also in /etc/fstab)")
    mount_options: str = _opt(
        "", "options for mount -o (comma-separated); /etc/fstab also gets nofail and a device timeout"
    )
    enable_swap: bool = _opt(
        False, "true makes a swap file (swapfile, swap_size_mb) on the resource disk and turns it on"
    )
    swap_size_mb: int = _opt(0, "size of the swap file in MiB")
    platforms: tuple[str, ...] = _opt(
        ("azure",),
        "platforms on which the resource disk is looked for (the /dev/disk/azure/resource link, or "
        "the one disk with an empty NTFS partition labelled Temporary Storage)",
    )


@attrs.frozen
class RootGrow:
    enabled: bool = _opt(
        True, "false never grows the root partition and filesystem to the end of the disk (once per boot)"
    )


@attrs.frozen
class MetadataFirewall:
    root_only: bool = _opt(
        False,
        "true lets only root reach the metadata service (169.254.169.254, and fd00:ec2::254 on EC2): "
        "an nftables table inet guestagent_metadata (iptables owner match without nft); false removes it",
    )


@attrs.frozen
class Config:
    Core: Core = attrs.field(factory=Core)
    Accounts: Accounts = attrs.field(factory=Accounts)
    Daemons: Daemons = attrs.field(factory=Daemons)
    Instance: Instance = attrs.field(factory=Instance)
    InstanceSetup: InstanceSetup = attrs.field(factory=InstanceSetup)
    IpForwarding: IpForwarding = attrs.field(factory=IpForwarding)
    MetadataScripts: MetadataScripts = attrs.field(factory=MetadataScripts)
    NetworkInterfaces: NetworkInterfaces = attrs.field(factory=NetworkInterfaces)
    Network: Network = attrs.field(factory=Network)
    OSLogin: OSLogin = attrs.field(factory=OSLogin)
    Clock: Clock = attrs.field(factory=Clock)
    EC2: EC2 = attrs.field(factory=EC2)
    NoCloud: NoCloud = attrs.field(factory=NoCloud)
    SmartOS: SmartOS = attrs.field(factory=SmartOS)
    VMware: VMware = attrs.field(factory=VMware)
    FirstBoot: FirstBoot = attrs.field(factory=FirstBoot)
    DigitalOcean: DigitalOcean = attrs.field(factory=DigitalOcean)
    OpenStack: OpenStack = attrs.field(factory=OpenStack)
    MetadataFirewall: MetadataFirewall = attrs.field(factory=MetadataFirewall)
    Azure: Azure = attrs.field(factory=Azure)
    ResourceDisk: ResourceDisk = attrs.field(factory=ResourceDisk)
    RootGrow: RootGrow = attrs.field(factory=RootGrow)


# One line of instance_configs.cfg per option, for the reference in docs/configuration.md.
EXAMPLES = {
    "ResourceDisk.format": "format = false",
    "ResourceDisk.filesystem": "filesystem = xfs",
    "ResourceDisk.mount_point": "mount_point = /mnt",
    "ResourceDisk.mount_options": "mount_options = nodev,nosuid",
    "ResourceDisk.enable_swap": "enable_swap = true",
    "ResourceDisk.swap_size_mb": "swap_size_mb = 2048",
    "ResourceDisk.platforms": "platforms = azure,nocloud",
    "RootGrow.enabled": "enabled = false",
    "Accounts.deprovision_remove": "deprovision_remove = true",
    "Accounts.groups": "groups = adm,video,docker",
    "Accounts.useradd_cmd": "useradd_cmd = useradd -m -s /bin/zsh -p * {user}",
    "Accounts.userdel_cmd": "userdel_cmd = userdel {user}",
    "Accounts.usermod_cmd": "usermod_cmd = usermod -G {groups} {user}",
    "Accounts.gpasswd_add_cmd": "gpasswd_add_cmd = adduser {user} {group}",
    "Accounts.gpasswd_remove_cmd": "gpasswd_remove_cmd = deluser {user} {group}",
    "Accounts.groupadd_cmd": "groupadd_cmd = groupadd -r {group}",
    "Accounts.allowed_system_users": "allowed_system_users = root",
    "Accounts.default_user": "default_user = debian",
    "Accounts.default_user_groups": "default_user_groups = adm,sudo,netdev",
    "Accounts.default_user_sudo": "default_user_sudo = false",
    "Core.platform": "platform = ec2",
    "Core.detect_timeout": "detect_timeout = 3",
    "EC2.allow_imdsv1": "allow_imdsv1 = true",
    "EC2.poll_interval": "poll_interval = 30",
    "EC2.token_ttl": "token_ttl = 3600",
    "NoCloud.seed_dir": "seed_dir = /var/lib/cloud/seed/nocloud-net",
    "NoCloud.poll_interval": "poll_interval = 300",
    "SmartOS.device": "device = /dev/ttyS2",
    "SmartOS.poll_interval": "poll_interval = 60",
    "VMware.poll_interval": "poll_interval = 0",
    "FirstBoot.enabled": "enabled = false",
    "FirstBoot.run_user_data": "run_user_data = true",
    "FirstBoot.timeout": "timeout = 1800",
    "DigitalOcean.poll_interval": "poll_interval = 30",
    "DigitalOcean.link_local": "link_local = false",
    "OpenStack.poll_interval": "poll_interval = 300",
    "Azure.provisioning": "provisioning = false",
    "Azure.wireserver": "wireserver = 127.0.0.1:8080",
    "Azure.delete_root_password": "delete_root_password = true",
    "Azure.decode_custom_data": "decode_custom_data = true",
    "Azure.monitor_hostname": "monitor_hostname = false",
    "Azure.monitor_hostname_period": "monitor_hostname_period = 60",
    "Azure.poll_interval": "poll_interval = 15",
    "Azure.password_crypt_id": "password_crypt_id = 5",
    "Azure.password_crypt_salt_length": "password_crypt_salt_length = 16",
    "Azure.ssh_dir": "ssh_dir = /usr/local/etc/ssh",
    "Azure.ssh_client_alive_interval": "ssh_client_alive_interval = 0",
    "Azure.http_proxy": "http_proxy = http://proxy.example:3128",
    "Azure.verbose": "verbose = true",
    "Daemons.accounts_daemon": "accounts_daemon = false",
    "Daemons.clock_skew_daemon": "clock_skew_daemon = false",
    "Daemons.network_daemon": "network_daemon = false",
    "Daemons.ip_forwarding_daemon": "ip_forwarding_daemon = false",
    "Instance.instance_id": "instance_id = 4520031799277581759",
    "InstanceSetup.host_key_types": "host_key_types = ed25519",
    "InstanceSetup.optimize_local_ssd": "optimize_local_ssd = false",
    "InstanceSetup.network_enabled": "network_enabled = false",
    "InstanceSetup.set_boto_config": "set_boto_config = false",
    "InstanceSetup.set_host_keys": "set_host_keys = false",
    "InstanceSetup.set_multiqueue": "set_multiqueue = false",
    "InstanceSetup.set_hostname": "set_hostname = false",
    "InstanceSetup.hostname_fqdn": "hostname_fqdn = true",
    "IpForwarding.ethernet_proto_id": "ethernet_proto_id = 77",
    "IpForwarding.ip_aliases": "ip_aliases = false",
    "IpForwarding.target_instance_ips": "target_instance_ips = false",
    "MetadataScripts.default_shell": "default_shell = /bin/sh",
    "MetadataScripts.run_dir": "run_dir = /var/lib/google",
    "MetadataScripts.startup": "startup = false",
    "MetadataScripts.shutdown": "shutdown = false",
    "MetadataScripts.shutdown_timeout": "shutdown_timeout = 60",
    "NetworkInterfaces.setup": "setup = false",
    "NetworkInterfaces.ip_forwarding": "ip_forwarding = false",
    "NetworkInterfaces.dhcp_command": "dhcp_command = dhclient -1 {interface}",
    "Network.enabled": "enabled = false",
    "Network.dns": "dns = resolvconf",
    "OSLogin.cert_authentication": "cert_authentication = true",
    "Clock.sync_command": "sync_command = chronyc makestep",
    "MetadataFirewall.root_only": "root_only = true",
}


@attrs.frozen
class ConfigLayer:
    """One file's text; `name` is used in warnings only."""

    name: str
    text: str


@attrs.frozen
class OptionDoc:
    section: str
    option: str
    default: str
    doc: str
    example: str


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def options() -> list[OptionDoc]:
    """Every option with its default and meaning, for docs and `guestagent config`."""
    out = []
    for section in attrs.fields(Config):
        cls = section.default.factory  # type: ignore[union-attr]
        for field in attrs.fields(cls):
            example = EXAMPLES[f"{section.name}.{field.name}"]
            doc = field.metadata["doc"]
            out.append(OptionDoc(section.name, field.name, _render(field.default), doc, example))
    return out


def render_values(config: Config) -> str:
    """The effective configuration as INI text (for `guestagent config`; never written to disk)."""
    lines = []
    for section in attrs.fields(Config):
        lines.append(f"[{section.name}]")
        for name, value in attrs.asdict(getattr(config, section.name), recurse=False).items():
            lines.append(f"{name} = {_render(value)}")
        lines.append("")
    return "\n".join(lines)


def render_reference() -> str:
    """Every option as a Markdown table: docs/configuration.md embeds exactly this."""
    rows = ["| section | option | default | meaning | example |", "|---|---|---|---|---|"]
    for doc in options():
        default = f"`{doc.default}`" if doc.default else "(empty)"
        rows.append(f"| {doc.section} | `{doc.option}` | {default} | {doc.doc} | `{doc.example}` |")
    return "\n".join(rows) + "\n"


def _convert(raw: str, default: object) -> object:
    text = raw.strip()
    if isinstance(default, bool):
        value = parse_bool(text)
        if value is None:
            raise ValueError(f"expected true or false, got {text!r}")
        return value
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        number = float(text)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"expected a number of seconds, got {text!r}")
        return number
    if isinstance(default, tuple):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def load_config(layers: Sequence[ConfigLayer]) -> tuple[Config, tuple[str, ...]]:
    """Merge layers (lowest precedence first) over the defaults.

    Returns the config and warnings: unknown sections or options, bad values
    (the lower layer's value stays) and unreadable files. Nothing is fatal:
    a typo in one option must not stop the agent from provisioning keys.
    """
    warnings: list[str] = []
    values: dict[str, dict[str, object]] = {
        s.name: attrs.asdict(getattr(Config(), s.name), recurse=False) for s in attrs.fields(Config)
    }
    for layer in layers:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(layer.text, source=layer.name)
        except configparser.Error as exc:
            warnings.append(f"{layer.name}: not a valid INI file ({exc.__class__.__name__}); ignored")
            continue
        for section in parser.sections():
            if section not in values:
                warnings.append(f"{layer.name}: unknown section [{section}]")
                continue
            for option, raw in parser.items(section):
                current = values[section]
                if option not in current:
                    warnings.append(f"{layer.name}: unknown option [{section}] {option}")
                    continue
                try:
                    current[option] = _convert(raw, current[option])
                except ValueError as exc:
                    warnings.append(f"{layer.name}: [{section}] {option}: {exc}; ignored")
    sections = {
        s.name: s.default.factory(**values[s.name])  # type: ignore[union-attr]
        for s in attrs.fields(Config)
    }
    return Config(**sections), tuple(warnings)


def layer_paths(main_path: str = DEFAULT_CONFIG_PATH) -> list[str]:
    """The files that make up the config for `main_path`, lowest precedence first."""
    return [main_path + suffix for suffix in LAYER_SUFFIXES]
