"""In-memory fakes of the ports, shared by the tests (the design card's "fakes tests use").

Each one implements its port exactly, records what it was asked, and answers
from settings a test can change between calls. Nothing here runs a program,
opens a socket or reads the machine's clock (unless a test hands a
`RecordingRunner` a real runner to delegate to).
"""

from __future__ import annotations

import errno
import getopt
import itertools
import posixpath
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import attrs

from guestagent.domain.accounts import home_mode
from guestagent.domain.local_users import PasswdEntry
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult, CommandRunner
from guestagent.ports.filesystem import FileInfo, UnsafePath
from guestagent.ports.metadata import MetadataDisabled, MetadataUnavailable, Snapshot

# A per-command answer: a result, or None for "answer as usual" (the default result,
# or the delegate runner). A hook may also raise, to fail a test on an unexpected command.
Respond = Callable[[tuple[str, ...]], CommandResult | None]
Which = Mapping[str, str] | Callable[[str], str | None]

DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen
class Run:
    """One call to `RecordingRunner.run`, with everything it was given."""

    argv: tuple[str, ...]
    timeout: float | None = None
    env: Mapping[str, str] | None = None
    stdin: str | None = None


def _default_which(program: str) -> str | None:
    return f"/usr/bin/{program}"


class RecordingRunner:
    """A CommandRunner that records every argv and answers without running anything.

    - `calls`: every argv, as a tuple, in order; a call is recorded before it is
      answered, so a hook sees itself in `calls`, and `last_run` has its timeout/env/stdin.
    - the answer: `respond(argv)` if given and not None, else `delegate.run(...)` if a
      delegate is given, else CommandResult(argv, returncode, stdout, stderr); the three
      defaults are plain attributes a test may change between calls.
    - `which`: a mapping (a missing program is None), a callable, or by default
      `/usr/bin/<program>` (or the delegate's answer when there is a delegate).
    """

    def __init__(
        self,
        *,
        returncode: int = 0,
        stdout: str = "",
        stderr: str = "",
        respond: Respond | None = None,
        which: Which | None = None,
        delegate: CommandRunner | None = None,
    ) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.respond = respond
        self.delegate = delegate
        self._which: Which = which if which is not None else (
            delegate.which if delegate is not None else _default_which
        )
        self.calls: list[tuple[str, ...]] = []
        self.last_run: Run | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        self.last_run = Run(args, timeout, env, stdin)
        if self.respond is not None:
            answer = self.respond(args)
            if answer is not None:
                return answer
        if self.delegate is not None:
            return self.delegate.run(args, timeout=timeout, env=env, stdin=stdin)
        return CommandResult(args, self.returncode, self.stdout, self.stderr)

    def which(self, program: str) -> str | None:
        if callable(self._which):
            return self._which(program)
        return self._which.get(program)


def _check_aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() != timedelta(0):
        raise ValueError(f"FixedClock wants an aware UTC time, not {at!r}")
    return at


class FixedClock:
    """A Clock that stands still until told: set `at`, or `advance(seconds)` both clocks."""

    def __init__(self, at: datetime = DEFAULT_NOW, monotonic: float = 0.0) -> None:
        self._at = _check_aware_utc(at)
        self._monotonic = monotonic

    @property
    def at(self) -> datetime:
        return self._at

    @at.setter
    def at(self, value: datetime) -> None:
        self._at = _check_aware_utc(value)

    def now(self) -> datetime:
        return self._at

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("clocks do not run backwards")
        self._at += timedelta(seconds=seconds)
        self._monotonic += seconds


class RecordingGuestAttributes:
    """GuestAttributes in a dict; with `fail` set every PUT raises MetadataUnavailable."""

    def __init__(self, *, fail: bool = False) -> None:
        self.values: dict[str, str] = {}
        self.fail = fail

    def put_guest_attribute(self, key: str, value: str) -> None:
        if self.fail:
            raise MetadataUnavailable("down")
        self.values[key] = value


# ---- metadata -------------------------------------------------------------------------------

ErrorSpec = BaseException | type[BaseException]


def _instance(error: ErrorSpec) -> BaseException:
    return error() if isinstance(error, type) else error


class FakeMetadataSource:
    """A MetadataSource a test drives by hand, safe to use from the daemon's threads.

    - `publish(metadata, etag=None)`: the new current snapshot, with a fresh etag
      (`etag-1`, `etag-2`, ...) unless one is given; it wakes any pending watch. Publishing
      with the current etag changes nothing a watch sees ("equal tags mean nothing changed").
    - `get()` answers the current snapshot, or raises MetadataUnavailable before the first
      publish; `watch(last_etag)` yields the current snapshot whenever its etag differs from
      the last one seen, blocking on a condition in between; it returns on `close()` or while
      the source is disabled (as the port says a real watch does).
    - failures, each consumed by one call: `fail_next(n, reason, where="get"|"watch")` raises
      MetadataUnavailable(reason) n times; `raise_next(error, times=1, where=...)` raises any
      exception (an instance, or a class instantiated each time), e.g. a RecursionError.
      A watch failure queued while a watch is blocked wakes it and is raised from it.
    - `disable(reason)`: every get raises MetadataDisabled (and watches end) until `enable()`.
    - `hang_gets(True)`: get() blocks until `hang_gets(False)` or close() (then it raises
      MetadataUnavailable), like a request that never answers.
    - `close()` wakes everything. `calls` records ("get",), ("watch", last_etag), ("close",)
      in order; `count(name)`, `wait_calls(name, n)` and `wait_watching()` let a test wait
      for the code under test without sleeping.
    """

    def __init__(self, metadata: InstanceMetadata | None = None, *, platform: str | None = None) -> None:
        self.platform = platform or (metadata.platform if metadata is not None else "gce")
        self._cond = threading.Condition()
        self._current: Snapshot | None = None
        self._serial = 0
        self._closed = False
        self._disabled: str | None = None
        self._hang = False
        self._failures: dict[str, deque[ErrorSpec]] = {"get": deque(), "watch": deque()}
        self._waiting = 0
        self.calls: list[tuple[str | None, ...]] = []
        if metadata is not None:
            self.publish(metadata)

    # -- what a test does

    def publish(self, metadata: InstanceMetadata, etag: str | None = None) -> Snapshot:
        with self._cond:
            self._serial += 1
            snapshot = Snapshot(metadata, etag if etag is not None else f"etag-{self._serial}")
            self._current = snapshot
            self._cond.notify_all()
            return snapshot

    @property
    def current(self) -> Snapshot | None:
        with self._cond:
            return self._current

    def fail_next(
        self, n: int = 1, reason: str = "metadata server unavailable", *, where: str = "get"
    ) -> None:
        for _ in range(n):
            self._queue(where, MetadataUnavailable(reason))

    def raise_next(self, error: ErrorSpec, *, times: int = 1, where: str = "get") -> None:
        for _ in range(times):
            self._queue(where, error)

    def disable(self, reason: str = "the metadata service is disabled") -> None:
        with self._cond:
            self._disabled = reason
            self._cond.notify_all()

    def enable(self) -> None:
        with self._cond:
            self._disabled = None
            self._cond.notify_all()

    def hang_gets(self, hang: bool = True) -> None:
        with self._cond:
            self._hang = hang
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def watching(self) -> int:
        """How many watches are blocked right now, waiting for a change."""
        with self._cond:
            return self._waiting

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for call in self.calls if call[0] == name)

    def wait_calls(self, name: str, n: int, timeout: float = 10.0) -> bool:
        """Wait until `name` ("get", "watch", "close") has been called at least n times."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count(name) >= n, timeout)

    def wait_watching(self, timeout: float = 10.0) -> bool:
        """Wait until some watch is blocked waiting for a newer snapshot."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting > 0, timeout)

    # -- the port

    def get(self) -> Snapshot:
        with self._cond:
            self._record("get")
            while self._hang and not self._closed:
                self._cond.wait()
            if self._hang:
                raise MetadataUnavailable("source closed while the request hung")
            if self._disabled is not None:
                raise MetadataDisabled(self._disabled)
            failures = self._failures["get"]
            if failures:
                raise _instance(failures.popleft())
            if self._current is None:
                raise MetadataUnavailable("no metadata published yet")
            return self._current

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        with self._cond:
            self._record("watch", last_etag)
        return self._follow(last_etag)

    def close(self) -> None:
        with self._cond:
            self._record("close")
            self._closed = True
            self._cond.notify_all()

    # -- inside

    def _queue(self, where: str, error: ErrorSpec) -> None:
        if where not in self._failures:
            raise ValueError(f"where is 'get' or 'watch', not {where!r}")
        with self._cond:
            self._failures[where].append(error)
            self._cond.notify_all()

    def _record(self, *call: str | None) -> None:
        self.calls.append(call)
        self._cond.notify_all()

    def _next_change(self, seen: str | None) -> Snapshot | None:
        with self._cond:
            while True:
                if self._closed or self._disabled is not None:
                    return None
                failures = self._failures["watch"]
                if failures:
                    raise _instance(failures.popleft())
                if self._current is not None and self._current.etag != seen:
                    return self._current
                self._waiting += 1
                self._cond.notify_all()
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1

    def _follow(self, last_etag: str | None) -> Iterator[Snapshot]:
        seen = last_etag
        while (snapshot := self._next_change(seen)) is not None:
            seen = snapshot.etag
            yield snapshot


# ---- files ----------------------------------------------------------------------------------

FILE, DIR, LINK = "file", "dir", "link"
_MAX_LINKS = 40


@attrs.define
class Entry:
    """One path in an InMemoryFileSystem: `data` is a file's text or a link's target."""

    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    data: str = ""


def _guest(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"guest paths are absolute: {path!r}")
    # normpath drops any '..' at the top, as LocalFileSystem.host_path does
    return posixpath.normpath("/" + path.lstrip("/"))


class InMemoryFileSystem:
    """The FileSystem port over a dict of path -> Entry (file, directory or symlink).

    Semantics the services rely on, as LocalFileSystem has them: symlinks in directory
    parts are followed (absolute targets are guest paths), `stat` does not follow the last
    part, `write_atomic` makes missing parents (0755) and replaces a link rather than
    writing through it, `write_user_file` refuses (UnsafePath) a symlink anywhere below the
    home and leaves the directories it passes with `dir_mode` and the user as owner,
    `create_home` copies `skel` (links as links) and never touches a home that exists.

    Test side: `add_dir`, `add_file`, `add_symlink` (parents made as root 0755), `entry(path)`
    (lstat-like, or None), `exists`, `paths(under)`, `remove_tree`. Every change made
    through the port is counted: `writes` (a Counter of guest paths written by write_atomic
    or write_user_file) and `operations` (("write_atomic"|"write_user_file"|"create_home"|
    "makedirs"|"remove", path) in order); `reset_counts()` clears both. A `check` given to
    write_atomic sees the temp file at its host path (`guest_path()` maps it back, so a
    runner hook can read it) before the rename.
    """

    def __init__(self, root: str = "/in-memory") -> None:
        self.root = root.rstrip("/")
        self._lock = threading.RLock()
        self._nodes: dict[str, Entry] = {"/": Entry(DIR, 0o755)}
        self._temps = itertools.count(1)
        self.writes: Counter[str] = Counter()
        self.operations: list[tuple[str, str]] = []

    # -- test side

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        with self._lock:
            where = self._resolve(path, follow_last=True)
            self._mkdirs(posixpath.dirname(where), 0o755)
            node = self._nodes.get(where)
            if node is not None and node.kind != DIR:
                raise FileExistsError(errno.EEXIST, "exists and is not a directory", path)
            self._nodes[where] = Entry(DIR, mode, uid, gid)

    def add_file(self, path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        with self._lock:
            where = self._resolve(path, follow_last=True)
            self._mkdirs(posixpath.dirname(where), 0o755)
            if where in self._nodes and self._nodes[where].kind == DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            self._nodes[where] = Entry(FILE, mode, uid, gid, text)

    def add_symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        with self._lock:
            where = self._resolve(path, follow_last=False)
            self._mkdirs(posixpath.dirname(where), 0o755)
            if where in self._nodes:
                raise FileExistsError(errno.EEXIST, "exists", path)
            self._nodes[where] = Entry(LINK, 0o777, uid, gid, target)

    def entry(self, path: str) -> Entry | None:
        """The entry at `path` itself (a link is not followed); None when absent."""
        with self._lock:
            try:
                return self._nodes.get(self._resolve(path, follow_last=False))
            except NotADirectoryError:
                return None

    def exists(self, path: str) -> bool:
        return self.entry(path) is not None

    def paths(self, under: str = "/") -> list[str]:
        """Every path strictly below `under`, sorted."""
        top = _guest(under)
        prefix = "/" if top == "/" else top + "/"
        with self._lock:
            return sorted(p for p in self._nodes if p != top and p.startswith(prefix))

    def remove_tree(self, path: str) -> None:
        with self._lock:
            where = self._resolve(path, follow_last=False)
            if where == "/":
                raise ValueError("will not remove /")
            prefix = where + "/"
            for p in [p for p in self._nodes if p == where or p.startswith(prefix)]:
                del self._nodes[p]

    def reset_counts(self) -> None:
        with self._lock:
            self.writes.clear()
            self.operations.clear()

    def guest_path(self, host_path: str) -> str:
        """The guest path of a host path this file system handed out."""
        if host_path != self.root and not host_path.startswith(self.root + "/"):
            raise ValueError(f"{host_path!r} is not under {self.root!r}")
        return _guest(host_path[len(self.root) :] or "/")

    # -- the port

    def host_path(self, path: str) -> str:
        clean = _guest(path)
        return self.root + clean if clean != "/" else self.root

    def read_text(self, path: str) -> str | None:
        with self._lock:
            node = self._nodes.get(self._resolve(path, follow_last=True))
            if node is None:
                return None
            if node.kind == DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            return node.data

    def stat(self, path: str) -> FileInfo | None:
        with self._lock:
            node = self._nodes.get(self._resolve(path, follow_last=False))
            if node is None:
                return None
            return FileInfo(
                mode=node.mode & 0o7777,
                uid=node.uid,
                gid=node.gid,
                is_symlink=node.kind == LINK,
                is_dir=node.kind == DIR,
            )

    def write_atomic(
        self,
        path: str,
        data: str,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        check: Callable[[str], None] | None = None,
    ) -> None:
        guest = _guest(path)
        with self._lock:
            target = self._resolve(guest, follow_last=False)
            parent, name = posixpath.split(target)
            self._mkdirs(parent, 0o755)
            existing = self._nodes.get(target)
            if existing is not None and existing.kind == DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            temp = posixpath.join(parent, f".{name}.{next(self._temps):08x}.tmp")
            self._nodes[temp] = Entry(FILE, mode, uid, gid, data)
            try:
                if check is not None:
                    check(self.host_path(temp))
            except BaseException:
                self._nodes.pop(temp, None)
                raise
            self._nodes[target] = self._nodes.pop(temp)
            self.writes[guest] += 1
            self.operations.append(("write_atomic", guest))

    def sweep_user_file(self, home: str, relative: str) -> int:
        return 0  # writes here are atomic: nothing is ever left behind

    def write_user_file(
        self, home: str, relative: str, data: str, *, mode: int, dir_mode: int, uid: int, gid: int
    ) -> None:
        guest = _guest(home.rstrip("/") + "/" + relative)
        with self._lock:
            # Opening the home itself follows links (it is not the user's to point elsewhere).
            current = self._resolve(home, follow_last=True)
            node = self._nodes.get(current)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such directory", home)
            if node.kind != DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", home)
            *dirs, name = relative.split("/")
            for part in dirs:
                child = posixpath.join(current, part)
                node = self._nodes.get(child)
                if node is None:
                    node = self._nodes[child] = Entry(DIR, dir_mode)
                if node.kind != DIR:
                    raise UnsafePath(f"~/{part} is a symlink or not a directory")
                node.uid, node.gid, node.mode = uid, gid, dir_mode
                current = child
            target = posixpath.join(current, name)
            node = self._nodes.get(target)
            if node is not None and node.kind == LINK:
                raise UnsafePath(f"~/{relative} is a symlink")
            if node is not None and node.kind == DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", guest)
            self._nodes[target] = Entry(FILE, mode, uid, gid, data)
            self.writes[guest] += 1
            self.operations.append(("write_user_file", guest))

    def create_home(self, home: str, skel: str, *, mode: int, uid: int, gid: int) -> None:
        with self._lock:
            target = self._resolve(home, follow_last=False)
            if target in self._nodes:  # someone's home: never merged into
                return
            self._mkdirs(posixpath.dirname(target), 0o755)
            source = self._resolve(skel, follow_last=False)
            copies: dict[str, Entry] = {}
            skeleton = self._nodes.get(source)
            if skeleton is not None and skeleton.kind == DIR:
                prefix = source.rstrip("/") + "/"
                for path, node in self._nodes.items():
                    if path.startswith(prefix):
                        copies[target + "/" + path[len(prefix) :]] = Entry(
                            node.kind, node.mode, uid, gid, node.data
                        )
            self._nodes[target] = Entry(DIR, mode, uid, gid)
            self._nodes.update(copies)
            self.operations.append(("create_home", _guest(home)))

    def makedirs(self, path: str, mode: int) -> None:
        with self._lock:
            self._mkdirs(self._resolve(path, follow_last=False), mode)
            self.operations.append(("makedirs", _guest(path)))

    def remove(self, path: str) -> None:
        with self._lock:
            where = self._resolve(path, follow_last=False)
            node = self._nodes.get(where)
            if node is None:
                return
            if node.kind == DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            del self._nodes[where]
            self.operations.append(("remove", _guest(path)))

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            try:
                where = self._resolve(path, follow_last=True)
            except NotADirectoryError:
                return []
            node = self._nodes.get(where)
            if node is None or node.kind != DIR:
                return []
            return sorted(
                posixpath.basename(p) for p in self._nodes if p != where and posixpath.dirname(p) == where
            )

    # -- inside

    def _resolve(self, path: str, *, follow_last: bool) -> str:
        """`path` with every symlink in its directory parts (and the last, if asked) replaced
        by its target; the result need not exist. Raises NotADirectoryError / ELOOP as the
        kernel would."""
        parts = [p for p in _guest(path).split("/") if p]
        done = "/"
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                done = posixpath.dirname(done)
                continue
            candidate = posixpath.join(done, name)
            node = self._nodes.get(candidate)
            if node is not None and node.kind == LINK and (parts or follow_last):
                hops += 1
                if hops > _MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = node.data if node.data.startswith("/") else posixpath.join(done, node.data)
                parts = [p for p in target.split("/") if p] + parts
                done = "/"
                continue
            if node is not None and node.kind == FILE and parts:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            done = candidate
        return done

    def _mkdirs(self, path: str, mode: int) -> None:
        """os.makedirs(path, mode, exist_ok=True) for a path with no links in its directory parts."""
        node = self._nodes.get(path)
        if node is not None:
            if node.kind == DIR or (node.kind == LINK and self._is_dir(path)):
                return
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", path)
        parent = posixpath.dirname(path)
        if parent != path:
            self._mkdirs(parent, 0o755)
        self._nodes[path] = Entry(DIR, mode)

    def _is_dir(self, path: str) -> bool:
        """Whether `path`, links followed, is a directory."""
        try:
            node = self._nodes.get(self._resolve(path, follow_last=True))
        except OSError:
            return False
        return node is not None and node.kind == DIR


# ---- users ----------------------------------------------------------------------------------

# Groups of a Debian base system the agent's defaults name (its [Accounts] groups and
# default_user_groups); "docker", "lxd" and "dip" are left out, as on a plain image.
BASE_GROUPS: Mapping[str, int] = {"root": 0, "adm": 4, "sudo": 27, "video": 44, "plugdev": 46}
ACCOUNT_PROGRAMS = frozenset({"useradd", "groupadd", "usermod", "userdel", "gpasswd"})


class _Refused(Exception):
    def __init__(self, returncode: int, message: str) -> None:
        super().__init__(message)
        self.returncode = returncode


class InMemoryUsers:
    """The UsersView port over dicts, kept up to date by the account commands the agent runs.

    Hand `respond` to a RecordingRunner (`RecordingRunner(respond=users.respond)`): an
    argv of useradd, groupadd, usermod, userdel or gpasswd (with or without the
    `--prefix ROOT` the agent adds under a sandbox root) changes passwd and group here as
    shadow-utils would, with their exit codes and messages for refusals (a user or group
    that exists or is missing); any other program gets None (the runner's usual answer).
    With a file system, `useradd -m` makes the home from /etc/skel (mode from
    /etc/login.defs, as the agent computes it) and `userdel -r` removes it.

    Test side: `add_user` (home made from skel unless `create_home=False`), `add_group`;
    `commands` lists the account argvs that arrived, `passwd`, `members` and `gids` are the
    state itself. Starts with root and BASE_GROUPS.
    """

    def __init__(
        self,
        fs: InMemoryFileSystem | None = None,
        *,
        uid_min: int = 1000,
        groups: Mapping[str, int] = BASE_GROUPS,
    ) -> None:
        self.fs = fs
        self._uid_min = uid_min
        self._lock = threading.RLock()
        self.passwd: dict[str, PasswdEntry] = {"root": PasswdEntry("root", 0, 0, "/root", "/bin/bash")}
        self.gids: dict[str, int] = dict(groups)
        self.members: dict[str, set[str]] = {name: set() for name in groups}
        self.commands: list[tuple[str, ...]] = []

    # -- the port

    def users(self) -> dict[str, PasswdEntry]:
        with self._lock:
            return dict(self.passwd)

    def groups(self) -> dict[str, frozenset[str]]:
        with self._lock:
            return {name: frozenset(members) for name, members in self.members.items()}

    def uid_min(self) -> int:
        return self._uid_min

    # -- test side

    def add_group(self, name: str, members: Sequence[str] = (), gid: int | None = None) -> int:
        with self._lock:
            if name in self.gids:
                raise ValueError(f"group {name} exists")
            self.gids[name] = gid if gid is not None else self._free(self.gids.values())
            self.members[name] = set(members)
            return self.gids[name]

    def add_user(
        self,
        name: str,
        *,
        uid: int | None = None,
        home: str | None = None,
        shell: str = "/bin/bash",
        groups: Sequence[str] = (),
        create_home: bool = True,
        home_mode: int = 0o755,
    ) -> PasswdEntry:
        """A user with a private group of its own name, as useradd makes it."""
        with self._lock:
            if name in self.passwd:
                raise ValueError(f"user {name} exists")
            uid = uid if uid is not None else self._free(e.uid for e in self.passwd.values())
            gid = self.add_group(name, gid=uid if uid not in self.gids.values() else None)
            entry = self.passwd[name] = PasswdEntry(name, uid, gid, home or f"/home/{name}", shell)
            for group in groups:
                self.members[group].add(name)
        if create_home and self.fs is not None:
            self.fs.create_home(entry.home, "/etc/skel", mode=home_mode, uid=uid, gid=gid)
        return entry

    # -- the runner hook

    def respond(self, argv: tuple[str, ...]) -> CommandResult | None:
        program = posixpath.basename(argv[0]) if argv else ""
        if program not in ACCOUNT_PROGRAMS:
            return None
        args = list(argv[1:])
        if len(args) >= 2 and args[0] == "--prefix":
            args = args[2:]
        with self._lock:
            self.commands.append(tuple(argv))
            try:
                getattr(self, f"_{program}")(args)
            except _Refused as exc:
                return CommandResult(tuple(argv), exc.returncode, "", f"{program}: {exc}\n")
            except getopt.GetoptError as exc:
                return CommandResult(tuple(argv), 2, "", f"{program}: {exc}\n")
        return CommandResult(tuple(argv), 0, "", "")

    # -- shadow-utils, as far as the agent uses them

    def _free(self, used: Iterable[int]) -> int:
        taken = set(used)
        n = self._uid_min
        while n in taken:
            n += 1
        return n

    def _need_user(self, user: str, code: int) -> PasswdEntry:
        if user not in self.passwd:
            raise _Refused(code, f"user '{user}' does not exist")
        return self.passwd[user]

    def _need_groups(self, names: Iterable[str], code: int) -> None:
        for name in names:
            if name not in self.gids:
                raise _Refused(code, f"group '{name}' does not exist")

    @staticmethod
    def _one_name(rest: list[str]) -> str:
        if len(rest) != 1:
            raise getopt.GetoptError(f"expected one name, got {rest!r}")
        return rest[0]

    def _useradd(self, args: list[str]) -> None:
        opts, rest = getopt.getopt(args, "mMrNUs:p:G:d:u:g:c:e:f:k:K:")
        options = dict(opts)
        user = self._one_name(rest)
        if user in self.passwd:
            raise _Refused(9, f"user '{user}' already exists")
        supplementary = [g for g in options.get("-G", "").split(",") if g]
        self._need_groups(supplementary, 6)
        uid = int(options["-u"]) if "-u" in options else self._free(e.uid for e in self.passwd.values())
        if "-g" in options:
            group = options["-g"]
            gid = int(group) if group.isdigit() else self.gids.get(group, -1)
            if gid not in self.gids.values():
                raise _Refused(6, f"group '{group}' does not exist")
        else:
            if user in self.gids:
                raise _Refused(
                    9, f"group {user} exists - if you want to add this user to that group, use -g."
                )
            gid = uid if uid not in self.gids.values() else self._free(self.gids.values())
            self.gids[user] = gid
            self.members[user] = set()
        entry = PasswdEntry(user, uid, gid, options.get("-d", f"/home/{user}"), options.get("-s", "/bin/sh"))
        self.passwd[user] = entry
        for group in supplementary:
            self.members[group].add(user)
        if "-m" in options and self.fs is not None:
            mode = home_mode(self.fs.read_text("/etc/login.defs"))
            self.fs.create_home(entry.home, options.get("-k", "/etc/skel"), mode=mode, uid=uid, gid=gid)

    def _groupadd(self, args: list[str]) -> None:
        opts, rest = getopt.getopt(args, "rfg:")
        options = dict(opts)
        group = self._one_name(rest)
        if group in self.gids:
            if "-f" in options:
                return
            raise _Refused(9, f"group '{group}' already exists")
        gid = int(options["-g"]) if "-g" in options else self._free(self.gids.values())
        self.gids[group] = gid
        self.members[group] = set()

    def _usermod(self, args: list[str]) -> None:
        opts, rest = getopt.getopt(args, "arG:s:d:")
        options = dict(opts)
        user = self._one_name(rest)
        self._need_user(user, 6)
        if "-G" in options:
            named = [g for g in options["-G"].split(",") if g]
            self._need_groups(named, 6)
            if "-a" in options:
                for group in named:
                    self.members[group].add(user)
            elif "-r" in options:
                for group in named:
                    self.members[group].discard(user)
            else:
                for group, members in self.members.items():
                    if group in named:
                        members.add(user)
                    else:
                        members.discard(user)
        if "-s" in options or "-d" in options:
            entry = self.passwd[user]
            self.passwd[user] = attrs.evolve(
                entry, shell=options.get("-s", entry.shell), home=options.get("-d", entry.home)
            )

    def _gpasswd(self, args: list[str]) -> None:
        opts, rest = getopt.getopt(args, "a:d:")
        group = self._one_name(rest)
        self._need_groups([group], 3)
        for flag, user in opts:
            self._need_user(user, 3)
            if flag == "-a":
                self.members[group].add(user)
            elif user not in self.members[group]:
                raise _Refused(3, f"user '{user}' is not a member of '{group}'")
            else:
                self.members[group].discard(user)

    def _userdel(self, args: list[str]) -> None:
        opts, rest = getopt.getopt(args, "rf")
        options = dict(opts)
        user = self._one_name(rest)
        entry = self._need_user(user, 6)
        del self.passwd[user]
        for members in self.members.values():
            members.discard(user)
        if self.gids.get(user) == entry.gid and not self.members.get(user):
            del self.gids[user]
            del self.members[user]
        if "-r" in options and self.fs is not None and self.fs.exists(entry.home):
            self.fs.remove_tree(entry.home)
