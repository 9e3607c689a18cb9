"""/etc/waagent.conf (WALinuxAgent's configuration) read into this agent's configuration. Pure.

An image moved from WALinuxAgent keeps working: the options that have a
meaning here are mapped (docs/azure.md has the table), the ones that belong
to WALinuxAgent's own machinery (extensions, auto-update, log collection,
RDMA, cgroups...) are named in one line as having no effect, and anything
else is reported as unknown. The file is only ever read.

Format (WALinuxAgent's README): `Name=value` lines; blank lines and lines
starting with `#` are ignored. Booleans are `y`/`n`; `None` means "not set"
for strings. WALinuxAgent's own reader also drops surrounding double quotes
and a `#` comment after the value, so this one does too.

Precedence: waagent.conf is a layer between `instance_configs.cfg.distro`
and the user's files (`.template`, `instance_configs.cfg`): it beats what an
image builder ships for this agent, and the agent's own user file beats it.
`insert_waagent` puts it there in the list `load_config` merges;
`merge_waagent` applies it on top of a finished Config (for programs that
only have one).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from guestagent.domain.config import Config, ConfigLayer
from guestagent.domain.values import parse_bool

WAAGENT_CONF = "/etc/waagent.conf"
MAX_BYTES = 256 * 1024

Key = tuple[str, str]  # (section, option) in this agent's config

# waagent.conf name -> (section, option, kind) for the plain one-to-one options.
_DIRECT: dict[str, tuple[str, str, str]] = {
    "Provisioning.DeleteRootPassword": ("Azure", "delete_root_password", "bool"),
    "Provisioning.RegenerateSshHostKeyPair": ("InstanceSetup", "set_host_keys", "bool"),
    "Provisioning.MonitorHostName": ("Azure", "monitor_hostname", "bool"),
    "Provisioning.MonitorHostNamePeriod": ("Azure", "monitor_hostname_period", "seconds"),
    "Provisioning.DecodeCustomData": ("Azure", "decode_custom_data", "bool"),
    "Provisioning.ExecuteCustomData": ("FirstBoot", "run_user_data", "bool"),
    "Provisioning.PasswordCryptId": ("Azure", "password_crypt_id", "str"),
    "Provisioning.PasswordCryptSaltLength": ("Azure", "password_crypt_salt_length", "int"),
    "ResourceDisk.Format": ("ResourceDisk", "format", "bool"),
    "ResourceDisk.Filesystem": ("ResourceDisk", "filesystem", "str"),
    "ResourceDisk.MountPoint": ("ResourceDisk", "mount_point", "path"),
    "ResourceDisk.MountOptions": ("ResourceDisk", "mount_options", "str"),
    "ResourceDisk.EnableSwap": ("ResourceDisk", "enable_swap", "bool"),
    "ResourceDisk.SwapSizeMB": ("ResourceDisk", "swap_size_mb", "int"),
    "OS.SshDir": ("Azure", "ssh_dir", "path"),
    "OS.SshClientAliveInterval": ("Azure", "ssh_client_alive_interval", "int"),
    "Logs.Verbose": ("Azure", "verbose", "bool"),
}
# Handled one by one below.
_SPECIAL = ("Provisioning.Agent", "Provisioning.SshHostKeyPairType", "HttpProxy.Host", "HttpProxy.Port")

# WALinuxAgent's own options with no counterpart here (its extension handler, updates,
# log collection, RDMA, firewall, cgroups...). Named once, as having no effect.
_NOT_APPLIED_PREFIXES = (
    "Extensions.", "Extension.", "AutoUpdate.", "Logs.", "CGroups.", "Debug.", "Lib.", "DVD.", "Pid.",
    "OS.", "ResourceDisk.", "Provisioning.", "HttpProxy.", "Protocol.", "Role.", "FIPS.",
)  # fmt: skip
_REMOVED = {
    "Provisioning.Enabled": "removed in WALinuxAgent 2.2.45 (use Provisioning.Agent)",
    "Provisioning.UseCloudInit": "removed in WALinuxAgent 2.2.45 (use Provisioning.Agent)",
}
_KEY_TYPES = {"rsa": ("rsa",), "ecdsa": ("ecdsa",), "ed25519": ("ed25519",)}


@attrs.frozen
class Mapped:
    """waagent.conf read: the values for this agent's options, and what to tell the user."""

    values: dict[Key, object] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()


def _convert(kind: str, raw: str) -> object:
    if kind == "bool":
        value = parse_bool(raw)
        if value is None:
            raise ValueError(f"expected y or n, got {raw[:40]!r}")
        return value
    if kind == "int":
        number = int(raw)
        if number < 0:
            raise ValueError(f"expected a number >= 0, got {raw[:40]!r}")
        return number
    if kind == "seconds":
        seconds = float(raw)
        if not 0 < seconds < 86400 * 365:
            raise ValueError(f"expected seconds > 0, got {raw[:40]!r}")
        return seconds
    if kind == "path" and not raw.startswith("/"):
        raise ValueError(f"expected an absolute path, got {raw[:40]!r}")
    if "\n" in raw or "\r" in raw:
        raise ValueError("a value cannot span lines")
    return raw


def _entries(text: str, name: str, warnings: list[str]) -> list[tuple[int, str, str]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, raw = stripped.partition("=")
        if not sep or not key.strip():
            warnings.append(f"{name} line {number}: not Name=value; ignored")
            continue
        value = raw.split("#", 1)[0].strip().strip('"').strip()
        entries.append((number, key.strip(), value))
    return entries


def read_waagent(text: str, name: str = WAAGENT_CONF) -> Mapped:
    """The options of waagent.conf that map onto this agent's config, with warnings for the
    rest (unknown names, bad values, WALinuxAgent options that have no effect here)."""
    warnings: list[str] = []
    if len(text) > MAX_BYTES:
        return Mapped({}, (f"{name}: larger than {MAX_BYTES} bytes; ignored",))
    values: dict[Key, object] = {}
    not_applied: list[str] = []
    proxy_host: str | None = None
    proxy_port: str | None = None
    for number, key, raw in _entries(text, name, warnings):
        where = f"{name} line {number}: {key}"
        unset = raw == "" or raw == "None"
        if key in _DIRECT:
            section, option, kind = _DIRECT[key]
            if unset:
                continue  # "None": not set here, the lower layers' value stands
            try:
                values[(section, option)] = _convert(kind, raw)
            except ValueError as exc:
                warnings.append(f"{where}: {exc}; ignored")
        elif key == "Provisioning.Agent":
            agent = raw.lower()
            if agent in ("auto", "waagent"):
                values[("Azure", "provisioning")] = True
            elif agent in ("cloud-init", "disabled"):
                values[("Azure", "provisioning")] = False
            else:
                warnings.append(
                    f"{where}: {raw[:40]!r} is not auto, waagent, cloud-init or disabled; ignored"
                )
        elif key == "Provisioning.SshHostKeyPairType":
            kind = raw.lower()
            if kind == "auto":
                values[("InstanceSetup", "host_key_types")] = ("ecdsa", "ed25519", "rsa")
            elif kind in _KEY_TYPES:
                values[("InstanceSetup", "host_key_types")] = _KEY_TYPES[kind]
            elif not unset:
                warnings.append(
                    f"{where}: {raw[:40]!r} refused (rsa, ecdsa, ed25519 or auto; OpenSSH has dropped dsa)"
                )
        elif key == "HttpProxy.Host":
            proxy_host = None if unset else raw
        elif key == "HttpProxy.Port":
            proxy_port = None if unset else raw
        elif key in _REMOVED:
            warnings.append(f"{where}: {_REMOVED[key]}; no effect")
        elif key.startswith(_NOT_APPLIED_PREFIXES):
            not_applied.append(key)
        else:
            warnings.append(f"{where}: unknown option; ignored")
    if proxy_host is not None:
        if any(c in proxy_host for c in " /@") or not proxy_host.strip():
            warnings.append(f"{name}: HttpProxy.Host {proxy_host[:60]!r} is not a host name; ignored")
        elif proxy_port is not None and not (proxy_port.isdigit() and 0 < int(proxy_port) < 65536):
            warnings.append(f"{name}: HttpProxy.Port {proxy_port[:20]!r} is not a port; proxy ignored")
        else:
            values[("Azure", "http_proxy")] = f"http://{proxy_host}:{proxy_port or '3128'}"
    elif proxy_port is not None:
        warnings.append(f"{name}: HttpProxy.Port without HttpProxy.Host; ignored")
    if not_applied:
        shown = ", ".join(sorted(set(not_applied)))
        warnings.append(f"{name}: WALinuxAgent options with no effect in guestagent: {shown}")
    return Mapped(values, tuple(warnings))


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def waagent_layer(text: str, name: str = WAAGENT_CONF) -> tuple[ConfigLayer, tuple[str, ...]]:
    """waagent.conf as one INI layer for load_config, and the warnings about it."""
    mapped = read_waagent(text, name)
    sections: dict[str, list[str]] = {}
    for (section, option), value in mapped.values.items():
        sections.setdefault(section, []).append(f"{option} = {_render(value)}")
    ini = "".join(
        f"[{section}]\n" + "".join(f"{line}\n" for line in lines) for section, lines in sections.items()
    )
    return ConfigLayer(name, ini), mapped.warnings


def insert_waagent(
    layers: Sequence[ConfigLayer], text: str | None, name: str = WAAGENT_CONF
) -> tuple[list[ConfigLayer], tuple[str, ...]]:
    """`layers` (lowest precedence first) with waagent.conf's after the `.distro` layer and
    before the user's files; unchanged when there is no waagent.conf (`text` None)."""
    out = list(layers)
    if text is None:
        return out, ()
    layer, warnings = waagent_layer(text, name)
    at = 0
    for index, existing in enumerate(out):
        if existing.name.endswith(".distro"):
            at = index + 1
    out.insert(at, layer)
    return out, warnings


def merge_waagent(config: Config, text: str) -> tuple[Config, tuple[str, ...]]:
    """`config` with waagent.conf's mapped options applied on top (no layering: for a program
    that has only a finished Config; the agent itself uses insert_waagent)."""
    mapped = read_waagent(text)
    sections: dict[str, dict[str, object]] = {}
    for (section, option), value in mapped.values.items():
        sections.setdefault(section, {})[option] = value
    changes = {
        section: attrs.evolve(getattr(config, section), **options) for section, options in sections.items()
    }
    return attrs.evolve(config, **changes), mapped.warnings
