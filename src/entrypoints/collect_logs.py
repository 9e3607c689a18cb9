"""`guestagent collect-logs [--out FILE]`: a tar.gz for a bug report, with secrets taken out.

What goes in (paths under --root):

- the agent's journal (`journalctl -u 'guestagent*'`; not read under a sandbox root,
  where the journal would be this machine's, not the sandbox's);
- the config layers (/etc/default/instance_configs.cfg and its .distro and .template,
  or the --config file's), /etc/waagent.conf, and the effective configuration;
- the agent's state: /var/lib/guestagent, /var/lib/google/google_users,
  /etc/google_instance_id, /run/guestagent, and the files the agent edits (hostname,
  hosts, resolv.conf, its resolved drop-in and sudoers drop-ins, sshd_config);
- manifest.txt: every file looked at, and what became of it.

Every text goes through guestagent.domain.redact (SSH key blobs, PEM blocks, password,
secret and token values). Files named like private keys are never opened, a file that
turns out to hold one is left out whole, and nothing under /etc/ssh but sshd_config is
read. Each path is opened one component at a time with O_NOFOLLOW, so a symlink anywhere
(in the state folders or above them) is listed, never followed. Sizes are bounded per
file and in total; binary files are left out. Members are named `guestagent-logs/...`
with relative paths only. The tarball is written to a temp file (0600) and renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

# Imported when the command runs: every other command builds this parser too.
if TYPE_CHECKING:
    import tarfile

EXIT_OK = 0
EXIT_FAILED = 1
PREFIX = "guestagent-logs"
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_FILES = 1000
MAX_DEPTH = 6
JOURNAL_LINES = 20000
JOURNAL_TIMEOUT = 60.0

FILES = (
    "/etc/waagent.conf",
    "/etc/google_instance_id",
    "/var/lib/google/google_users",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/systemd/resolved.conf.d/guestagent.conf",
    "/etc/sudoers.d/google_sudoers",
    "/etc/sudoers.d/guestagent",
    "/etc/ssh/sshd_config",
    "/etc/boto.cfg",
)
TREES = ("/var/lib/guestagent", "/run/guestagent")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    collect = subparsers.add_parser(
        "collect-logs",
        parents=[common],
        help="write a tar.gz of the agent's journal, config and state, secrets redacted",
    )
    collect.add_argument(
        "--out", help="the tarball to write (default: /var/tmp/guestagent-logs-<UTC time>.tar.gz)"
    )


class Skipped(Exception):
    """A file left out, and why (for the manifest)."""


def _open_beneath(root: str, path: str, *, directory: bool = False) -> int:
    """An fd for the guest `path` under `root`, no component followed if it is a symlink."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise Skipped("not a safe path")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        if directory:
            flags |= os.O_DIRECTORY
        return os.open(parts[-1], flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(path) from exc
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Skipped("a symlink (or under one), not followed") from exc
        raise Skipped(f"cannot open: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _read_bounded(fd: int, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes, and whether there was more."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Skipped("not a regular file")
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:limit], len(data) > limit


def _walk(root: str, folder: str, depth: int = 0) -> Iterator[tuple[str, str | None]]:
    """(guest path, None) for files, (guest path, why) for what is not collected."""
    try:
        fd = _open_beneath(root, folder, directory=True)
    except FileNotFoundError:
        return
    except Skipped as exc:
        yield folder, str(exc)
        return
    try:
        with os.scandir(fd) as entries:
            listed = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in entries)
    finally:
        os.close(fd)
    for name, is_link, is_dir in listed:
        path = f"{folder.rstrip('/')}/{name}"
        if is_link:
            yield path, "a symlink, not followed"
        elif is_dir and depth >= MAX_DEPTH:
            yield path, "too deep, not walked"
        elif is_dir:
            yield from _walk(root, path, depth + 1)
        else:
            yield path, None


class Collector:
    def __init__(self, tar: tarfile.TarFile, now: float) -> None:
        self._tar = tar
        self._now = now
        self.total = 0
        self.files = 0
        self.manifest: list[str] = []

    def add_text(self, member: str, text: str, note: str = "", *, ours: bool = False) -> None:
        """Add `text` redacted; `ours` (the manifest, the version) is the collector's own text."""
        import io
        import tarfile

        from guestagent.domain import redact

        payload = (text if ours else redact.redact(text)).encode("utf-8", "surrogateescape")
        info = tarfile.TarInfo(f"{PREFIX}/{member}")
        info.size = len(payload)
        info.mtime = int(self._now)
        info.mode = 0o600
        info.uname = info.gname = "root"
        self._tar.addfile(info, io.BytesIO(payload))
        self.total += len(payload)
        self.files += 1
        self.manifest.append(f"{member}: {len(payload)} bytes{note}")

    def add_file(self, root: str, path: str, member_root: str = "files") -> None:
        from guestagent.domain import redact

        member = redact.member_name(member_root, path)
        if member is None:
            self.manifest.append(f"{path!r}: left out (not a safe name)")
            return
        if redact.never_read(path):
            self.manifest.append(f"{member}: left out (named like a private key; never opened)")
            return
        if self.files >= MAX_FILES or self.total >= MAX_TOTAL_BYTES:
            self.manifest.append(f"{member}: left out (the tarball's size bound was reached)")
            return
        try:
            fd = _open_beneath(root, path)
        except FileNotFoundError:
            return
        except Skipped as exc:
            self.manifest.append(f"{member}: left out ({exc})")
            return
        try:
            data, cut = _read_bounded(fd, min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - self.total))
        except Skipped as exc:
            self.manifest.append(f"{member}: left out ({exc})")
            return
        except OSError as exc:
            self.manifest.append(f"{member}: left out (cannot read: {exc.strerror})")
            return
        finally:
            os.close(fd)
        if b"\0" in data:
            self.manifest.append(f"{member}: left out (binary)")
            return
        text = data.decode("utf-8", "surrogateescape")
        if redact.holds_private_key(text):
            self.manifest.append(f"{member}: left out (holds a private key)")
            return
        self.add_text(member, text, ", cut at the size bound" if cut else "")


def _journal(args: argparse.Namespace, confined: bool, collector: Collector) -> None:
    from guestagent.adapters.subprocess_runner import SubprocessRunner

    if confined:
        collector.manifest.append("journal: not read under a sandbox root (it would be this machine's)")
        return
    runner = SubprocessRunner()
    if runner.which("journalctl") is None:
        collector.manifest.append("journal: no journalctl on this machine")
        return
    result = runner.run(
        ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(JOURNAL_LINES), "-u", "guestagent*"],
        timeout=JOURNAL_TIMEOUT,
    )
    if not result.ok:
        why = f"journalctl exit {result.returncode}: {result.stderr.strip()[:200]}"
        collector.manifest.append(f"journal: {why}")
    if not result.stdout:
        return
    text = result.stdout[-MAX_FILE_BYTES:]
    collector.add_text("journal.txt", text, ", the newest lines" if len(result.stdout) > len(text) else "")


def _config_layers(args: argparse.Namespace, root: str, collector: Collector) -> None:
    from guestagent.domain.config import DEFAULT_CONFIG_PATH, layer_paths

    if args.config is None:
        for path in layer_paths(DEFAULT_CONFIG_PATH):
            collector.add_file(root, path)
        return
    # --config names a file on this machine, outside the root.
    for path in layer_paths(os.path.abspath(args.config)):
        collector.add_file("/", path, member_root="config")


def _effective_config(args: argparse.Namespace, collector: Collector) -> None:
    from guestagent.adapters.local_filesystem import LocalFileSystem
    from guestagent.domain.config import render_values
    from guestagent.entrypoints.bootstrap import read_config
    from guestagent.entrypoints.oneshot import options_from

    try:
        config = read_config(options_from(args, True), LocalFileSystem(args.root))
    except (OSError, ValueError) as exc:
        collector.manifest.append(f"effective-config.txt: not made ({exc})")
        return
    collector.add_text("effective-config.txt", render_values(config))


def collect(args: argparse.Namespace, out: str, now: float) -> list[str]:
    """Write the tarball to `out`; returns the manifest lines."""
    import tarfile

    from guestagent.domain import redact
    from guestagent.entrypoints.cli import agent_version

    root = os.path.abspath(args.root)
    confined = root != "/"
    folder = os.path.dirname(os.path.abspath(out))
    temp = os.path.join(folder, f".{os.path.basename(out)}.{os.getpid()}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            collector = Collector(tar, now)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            about = f"guestagent {agent_version()}\nroot {root}\ncollected {stamp}\n"
            collector.add_text("version.txt", about, ours=True)
            _journal(args, confined, collector)
            _config_layers(args, root, collector)
            _effective_config(args, collector)
            for path in FILES:
                collector.add_file(root, path)
            for tree in TREES:
                for path, why in _walk(root, tree):
                    if why is None:
                        collector.add_file(root, path)
                    else:
                        name = redact.member_name("files", path) or repr(path)
                        collector.manifest.append(f"{name}: left out ({why})")
            manifest = [*collector.manifest, "manifest.txt"]
            collector.add_text("manifest.txt", "".join(f"{line}\n" for line in manifest), ours=True)
        os.rename(temp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return manifest


def default_out(now: float) -> str:
    return time.strftime("/var/tmp/guestagent-logs-%Y%m%dT%H%M%SZ.tar.gz", time.gmtime(now))


def run(args: argparse.Namespace) -> int:
    now = time.time()
    out = args.out or default_out(now)
    try:
        manifest = collect(args, out, now)
    except OSError as exc:
        print(f"guestagent: cannot write {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    left_out = sum(1 for line in manifest if ": left out (" in line)
    print(f"{out}: {len(manifest)} entries ({left_out} left out: see manifest.txt inside)")
    return EXIT_OK
