"""Azure provisioning as a subsystem: once per VM id, then Ready (or NotReady and why) to the fabric.

The plan is pure (guestagent.domain.azure_provisioning); here the guest is
read and changed through the ports: files through FileSystem, shadow-utils
through the CommandRunner (`usermod --prefix ROOT` under a sandbox root),
sshd_config checked with `sshd -t` before it replaces the old one (the OS
Login subsystem's check), and the report delivered through the platform's
fabric channel (ports.fabric.FabricHealth: the Azure transport itself, handed
over by the composition root as the context's write-back channel).

It runs in the accounts lane, after accounts: the admin's keys are installed
by then, and a user that accounts could not create is tried once more here
so the report carries the exact reason (`useradd: cannot lock /etc/passwd`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

from guestagent.domain import accounts as accounts_domain
from guestagent.domain import azure_provisioning as domain
from guestagent.domain import hostname as hostname_domain
from guestagent.domain import oslogin as oslogin_domain
from guestagent.domain import passwords
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.azure import READY_STATUS, HealthStatus, azure, failed
from guestagent.ports.fabric import FabricHealth
from guestagent.ports.filesystem import UnsafePath
from guestagent.ports.metadata import MetadataUnavailable
from guestagent.services import accounts as accounts_service
from guestagent.services.context import Context
from guestagent.services.hostname import read_live
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.oslogin import _restart as restart_services
from guestagent.services.oslogin import sshd_check
from guestagent.services.subsystem import Outcome

COMMAND_TIMEOUT = 60.0
NAME = "azure_provisioning"
NETWORKD_LEASES = "/run/systemd/netif/leases"


def random_salt(length: int) -> str:
    return "".join(secrets.choice(passwords.SALT_CHARS) for _ in range(length))


def fabric(ctx: Context) -> FabricHealth | None:
    """The channel health reports go through: a `fabric` the context carries, else the
    platform's write-back channel when the source is one (the Azure transport)."""
    for channel in (getattr(ctx, "fabric", None), ctx.guest_attributes):
        if isinstance(channel, FabricHealth):
            return channel
    return None


def _usermod(ctx: Context, *args: str) -> list[str]:
    argv = ["usermod", *args]
    return argv if ctx.root == "/" else [argv[0], "--prefix", ctx.root, *argv[1:]]


def _run(ctx: Context, argv: list[str], secret: str | None = None) -> str | None:
    """Run argv; an error message (never holding `secret`), or None."""
    result = ctx.runner.run(argv, timeout=COMMAND_TIMEOUT)
    if result.ok:
        return None
    stderr = result.stderr.strip()[:300]
    if secret:
        stderr = stderr.replace(secret, "***")
    return f"{argv[0]} exit {result.returncode}: {stderr}"


def restore_sshd_config(ctx: Context) -> str | None:
    """Deprovision: put back, byte for byte, the sshd_config provisioning changed (kept at
    SSHD_BACKUP when it first changed it) and drop the copy. Returns what was done, or None
    when there was nothing to restore. Raises OSError/UnsafePath when the write fails."""
    original = ctx.fs.read_text(domain.SSHD_BACKUP)
    if original is None:
        return None
    path = ctx.config.Azure.ssh_dir.rstrip("/") + "/sshd_config"
    info = ctx.fs.stat(path)
    mode, uid, gid = (info.mode, info.uid, info.gid) if info is not None else (0o644, 0, 0)
    ctx.fs.write_atomic(path, original, mode=mode, uid=uid, gid=gid)
    ctx.fs.remove(domain.SSHD_BACKUP)
    error = restart_services(ctx, oslogin_domain.RestartServices(reload_sshd=True, restart=()))
    if error is not None:
        ctx.log.warning("%s: sshd not reloaded: %s", NAME, error)
    return f"restored {path} from {domain.SSHD_BACKUP}"


class AzureProvisioningSubsystem:
    name = NAME

    def __init__(self, salt: Callable[[int], str] = random_salt) -> None:
        self._salt = salt
        self._warnings = WarnOnce(f"{NAME}: ")

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return metadata.platform == "azure" and ctx.config.Azure.provisioning

    def inputs(self, metadata: InstanceMetadata) -> object:
        return (
            metadata.instance_id,
            azure(metadata),
            metadata.ssh_keys,
            metadata.hostname,
            metadata.user_data,
            metadata.rejections_for(self.name),
        )

    # -------------------------------------------------------------- observe / plan

    def desired(self, ctx: Context, metadata: InstanceMetadata) -> domain.Desired:
        extras = azure(metadata)
        settings = ctx.config.Azure
        blockers: list[str] = []
        if extras.ovf_error:
            blockers.append(extras.ovf_error)
        if extras.admin_user is None:
            blockers.append("no usable admin user name (the DVD's UserName, IMDS osProfile.adminUsername)")
        if extras.preprovisioned_vm:
            blockers.append("pre-provisioned (pooled) VMs are not supported by this agent")
        custom: bytes | None = None
        if extras.custom_data is not None:
            custom = (
                metadata.user_data
                if settings.decode_custom_data
                else extras.custom_data.encode("ascii", "replace")
            )
        wanted_name = None
        if ctx.config.InstanceSetup.set_hostname:  # else: publish what the machine is called
            wanted_name, _notes = hostname_domain.desired(metadata, ctx.config.InstanceSetup)
        key_lines: tuple[str, ...] = ()
        if ctx.config.Daemons.accounts_daemon and extras.admin_user is not None:
            key_lines = tuple(k.line for k in metadata.ssh_keys if k.user == extras.admin_user)
        return domain.Desired(
            vm_id=metadata.instance_id,
            admin_user=extras.admin_user,
            password=extras.password,
            disable_password_auth=extras.disable_password_auth,
            custom_data=custom,
            hostname=wanted_name.name if wanted_name is not None else None,
            delete_root_password=settings.delete_root_password,
            client_alive_interval=settings.ssh_client_alive_interval,
            sshd_config_path=settings.ssh_dir.rstrip("/") + "/sshd_config",
            blockers=tuple(blockers),
            key_lines=key_lines,
        )

    def observe(self, ctx: Context, want: domain.Desired) -> domain.Current:
        current_name: str | None = None
        if ctx.config.Azure.monitor_hostname or want.hostname is None:
            live = read_live(ctx) if ctx.owns_machine else ""
            current_name = live or (ctx.fs.read_text(hostname_domain.HOSTNAME_PATH) or "").strip() or None
        return domain.Current(
            record=domain.parse_record(ctx.fs.read_text(domain.RECORD_PATH)),
            admin_exists=want.admin_user is not None and want.admin_user in ctx.users.users(),
            sshd_text=ctx.fs.read_text(want.sshd_config_path),
            backup_exists=ctx.fs.stat(domain.SSHD_BACKUP) is not None,
            custom_data=ctx.fs.read_text(domain.CUSTOM_DATA_PATH),
            dhclient_text=ctx.fs.read_text(domain.DHCLIENT_CONF),
            current_hostname=current_name,
        )

    def plan(
        self, ctx: Context, metadata: InstanceMetadata
    ) -> tuple[domain.Plan, domain.Desired, domain.Current]:
        want = self.desired(ctx, metadata)
        have = self.observe(ctx, want)
        record = have.record
        done = record is not None and record.vm_id == want.vm_id and record.provisioned
        hashed: str | None = None
        notes: list[str] = []
        if not done and want.password is not None and not want.blockers:
            crypt_id, note = passwords.choose_id(ctx.config.Azure.password_crypt_id)
            if note:
                notes.append(note)
            length = passwords.salt_length(ctx.config.Azure.password_crypt_salt_length)
            hashed = passwords.sha_crypt(want.password, self._salt(length), crypt_id)
        planned = domain.plan(want, have, hashed, monitor_hostname=ctx.config.Azure.monitor_hostname)
        if notes:
            planned = domain.Plan(planned.actions, (*notes, *planned.notes), planned.first_time)
        return planned, want, have

    # -------------------------------------------------------------- apply

    def _create_admin(self, ctx: Context, user: str) -> list[str]:
        """The admin as the accounts subsystem would make it (groups, sudo group, sudoers)."""
        layout = accounts_domain.layout_for("azure")
        want = accounts_domain.AccountsDesired(keys={user: ()}, layout=layout)
        scope = frozenset({user})
        have = accounts_service.observe(ctx, [user], scope, layout)
        planned = accounts_domain.plan(want, have, ctx.config.Accounts, scope)
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        kinds = (accounts_domain.CreateGroup, accounts_domain.WriteSudoers, accounts_domain.CreateUser)
        steps = [a for a in planned.actions if isinstance(a, kinds)]
        if user not in have.users and not any(isinstance(a, accounts_domain.CreateUser) for a in steps):
            reason = next((note for note in planned.notes if repr(user) in note), "refused")
            return [f"admin user {user} not created: {reason}"]
        _done, failures = accounts_service.apply(ctx, steps, have.users)
        return list(failures)

    def _edit_sshd(self, ctx: Context, action: domain.EditSshdConfig) -> None:
        if action.backup is not None:
            ctx.fs.write_atomic(domain.SSHD_BACKUP, action.backup, mode=0o600)
        info = ctx.fs.stat(action.path)
        mode, uid, gid = (info.mode, info.uid, info.gid) if info is not None else (0o644, 0, 0)
        ctx.fs.write_atomic(action.path, action.text, mode=mode, uid=uid, gid=gid, check=sshd_check(ctx))
        error = restart_services(ctx, oslogin_domain.RestartServices(reload_sshd=True, restart=()))
        if error is not None:
            ctx.log.warning("%s: sshd not reloaded: %s", NAME, error)

    def _publish(self, ctx: Context, action: domain.PublishHostname, metadata: InstanceMetadata) -> None:
        info = ctx.fs.stat(action.path)
        mode = info.mode if info is not None else 0o644
        ctx.fs.write_atomic(action.path, action.text, mode=mode)
        self._renew(ctx, metadata)

    def _renew(self, ctx: Context, metadata: InstanceMetadata) -> None:
        """Send the name now where that is safe: systemd-networkd renews in place. dhclient
        can only be restarted (a moment without an address, and no way back if it fails),
        so there the name goes out with the next lease renewal or boot."""
        if not ctx.owns_machine:
            return
        nics = metadata.network_interfaces
        if not ctx.fs.listdir(NETWORKD_LEASES) or ctx.runner.which("networkctl") is None or not nics:
            self._warnings.warn(
                ctx.log, "the hostname goes out to Azure's DNS with the DHCP client's next lease renewal"
            )
            return
        for name in ctx.fs.listdir("/sys/class/net"):
            address = (ctx.fs.read_text(f"/sys/class/net/{name}/address") or "").strip().lower()
            if address == nics[0].mac:
                error = _run(ctx, ["networkctl", "renew", name])
                if error is not None:
                    ctx.log.warning("%s: %s", NAME, error)
                return

    def _report(self, ctx: Context, status: HealthStatus) -> str | None:
        """Deliver the report; an error message, or None when the fabric took it."""
        channel = fabric(ctx)
        if channel is None:
            return "no channel to the Azure fabric: health report not sent"
        try:
            channel.report_health(status)
        except MetadataUnavailable as exc:
            return str(exc)
        return None

    def _record(self, ctx: Context, record: domain.Record) -> None:
        try:
            ctx.fs.write_atomic(domain.RECORD_PATH, domain.render_record(record), mode=domain.RECORD_MODE)
        except (OSError, UnsafePath) as exc:
            ctx.log.error("%s: could not write %s: %s", NAME, domain.RECORD_PATH, exc)

    def apply(
        self,
        ctx: Context,
        metadata: InstanceMetadata,
        planned: domain.Plan,
        want: domain.Desired,
        have: domain.Current,
    ) -> tuple[list[str], list[str]]:
        journal = ApplyJournal(ctx.log, f"{NAME}: ")
        failures: list[str] = list(want.blockers) if planned.first_time else []
        for blocker in failures:
            journal.failed(blocker)
        admin_missing = False
        for action in planned.actions:
            try:
                if isinstance(action, domain.CreateAdmin):
                    errors = self._create_admin(ctx, action.user)
                    if errors:
                        admin_missing = True
                        failures.extend(errors)
                        for message in errors:
                            journal.failed(message)
                        continue
                elif isinstance(action, domain.SetPassword):
                    if admin_missing:
                        continue
                    problem = _run(ctx, _usermod(ctx, "-p", action.hashed, action.user), secret=action.hashed)
                    if problem is not None:
                        raise ValueError(f"setting {action.user}'s password failed: {problem}")
                elif isinstance(action, domain.LockRootPassword):
                    problem = _run(ctx, _usermod(ctx, "-p", domain.LOCKED_PASSWORD, "root"))
                    if problem is not None:
                        raise ValueError(f"locking root's password failed: {problem}")
                elif isinstance(action, domain.EditSshdConfig):
                    self._edit_sshd(ctx, action)
                elif isinstance(action, domain.SaveCustomData):
                    ctx.fs.makedirs("/var/lib/waagent", 0o700)
                    ctx.fs.write_atomic(action.path, action.data, mode=domain.CUSTOM_DATA_MODE)
                elif isinstance(action, domain.PublishHostname):
                    self._publish(ctx, action, metadata)
                elif isinstance(action, domain.CheckKeys):
                    if admin_missing:
                        continue
                    self._check_keys(ctx, action)
                elif isinstance(action, domain.Report | domain.ReportOnly):
                    self._finish(
                        ctx, journal, want, have, failures, only=isinstance(action, domain.ReportOnly)
                    )
                    continue
            except (OSError, UnsafePath, ValueError) as exc:
                message = str(exc) if isinstance(exc, ValueError) else f"{action.describe()} failed: {exc}"
                failures.append(message)
                journal.failed(message)
                continue
            journal.did(action)
        return journal.result()

    def _check_keys(self, ctx: Context, action: domain.CheckKeys) -> None:
        entry = ctx.users.users().get(action.user)
        if entry is None:
            raise ValueError(f"user {action.user} does not exist: its keys are not installed")
        state = accounts_service.observe_keys_file(ctx, entry)
        missing = domain.missing_keys(state.text, action.lines)
        if missing:
            raise ValueError(
                f"{missing} of {len(action.lines)} SSH keys of {action.user} are not in "
                "~/.ssh/authorized_keys (see the accounts subsystem's log)"
            )

    def _finish(
        self,
        ctx: Context,
        journal: ApplyJournal,
        want: domain.Desired,
        have: domain.Current,
        failures: list[str],
        *,
        only: bool,
    ) -> None:
        steps_failed = bool(failures)
        status = failed(domain.failure_description(failures)) if steps_failed else READY_STATUS
        error = self._report(ctx, status)
        previous = have.record if have.record is not None and have.record.vm_id == want.vm_id else None
        provisioned = True if only else not steps_failed
        reported = status.state if error is None else (previous.reported if previous is not None else None)
        self._record(
            ctx,
            domain.Record(
                vm_id=want.vm_id,
                provisioned=provisioned,
                reported=reported,
                failure=domain.failure_description(failures) if steps_failed else None,
            ),
        )
        if error is not None:
            failures.append(error)
            journal.failed(f"health report {status.state} not delivered: {error}")
        else:
            journal.done.append(f"report {status.describe()} to the fabric (accepted)")
            ctx.log.info("%s: reported %s to the fabric", NAME, status.describe())

    # -------------------------------------------------------------- the subsystem

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        planned, want, have = self.plan(ctx, metadata)
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        wake = None
        if ctx.config.Azure.monitor_hostname:
            wake = ctx.clock.now() + timedelta(seconds=ctx.config.Azure.monitor_hostname_period)
        if ctx.dry_run:
            described = [*(f"refuse: {b}" for b in want.blockers if planned.first_time)]
            described += [a.describe() for a in planned.actions]
            return Outcome(self.name, tuple(described))
        if planned.first_time:
            ctx.log.info("%s: provisioning VM %s", NAME, want.vm_id)
        done, failures = self.apply(ctx, metadata, planned, want, have)
        return Outcome(self.name, tuple(done), tuple(failures), wake_at=wake)
