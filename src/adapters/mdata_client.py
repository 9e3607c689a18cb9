"""The guest side of the SmartOS / Triton metadata protocol (version 2).

The channel is the second serial port on KVM/bhyve guests (`/dev/ttyS1`,
COM2) or a unix socket in zones (`/native/.zonecontrol/metadata.sock`; tests
use the simulator's). One transaction ("session") at a time:

1. open the channel; a serial port is put in raw mode (8 bits, no echo, no
   line discipline) and locked with an exclusive POSIX record lock (the lock
   `mdata-get` and cloud-init take too), waiting at most `lock_timeout`;
2. drain: whatever the host was still sending for an earlier client is read
   and dropped until the line has been quiet for `drain` seconds (~100 ms);
3. reset: send `\\n` and read lines until `invalid command` (a line boundary);
4. negotiate: send `NEGOTIATE V2`, expect `V2_OK`;
5. requests, each with a fresh random request id: an answer whose checksum
   or length is wrong, that is not a frame, or that carries another request's
   id (a late answer to a request that timed out) is dropped and the wait
   goes on until the request's own deadline.

A host that answers NEGOTIATE with anything but `V2_OK` speaks only version
1. That is refused (MdataV1Only), not spoken: version 1 has no request ids and
no checksums, so on a shared serial line a stale or garbled answer cannot be
told from the right one, and one key's value (user-data, say) could be taken
for another's (root's authorized keys). Every Triton/SmartOS host since 2013
speaks version 2; cloud-init refuses version 1 the same way.

Who may use the channel (decided here, enforced on every open):

- a serial device must be a character device owned by root (or by this
  process's user, for tests) with no permission bits for "others": a device
  anyone can read lets any local user read the answers (root's keys,
  user-data) or steal them off the line. Group access is accepted: Debian's
  udev rules give serial ports to root:dialout 0660, and refusing that would
  refuse every stock image. The agent never changes a device's mode or
  owner, and opens it with O_NOCTTY (it never becomes a controlling tty).
- a unix socket must be owned by root (or this process's user), and the
  process listening on it must run as one of them (SO_PEERCRED): anyone else
  could play the host and hand out root's keys.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import select
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterator

from guestagent.domain import mdata
from guestagent.ports.metadata import MetadataUnavailable

log = logging.getLogger(__name__)

DEFAULT_DEVICE = "/dev/ttyS1"
ZONE_SOCKET = "/native/.zonecontrol/metadata.sock"

_READ_CHUNK = 65536


class MdataError(MetadataUnavailable):
    """The metadata channel could not answer; str() is safe to log."""


class MdataTimeout(MdataError):
    """The host did not answer in time."""


class MdataV1Only(MdataError):
    """The host speaks only protocol version 1, which this client refuses (see the module doc)."""


class MdataUnsafeChannel(MdataError):
    """The device or socket is not one the agent may trust (owner, mode, listener)."""


class MdataFailure(MdataError):
    """The host answered FAILURE (e.g. a PUT to the read-only sdc: namespace)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"the host refused {what}: {message or 'FAILURE'}")
        self.message = message


class MdataSession:
    """One open, locked, negotiated channel. Use MdataClient.session() to get one."""

    def __init__(self, client: MdataClient, fd: int, sock: socket.socket | None) -> None:
        self._client = client
        self._fd = fd
        self._sock = sock
        self._buffer = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE: drop up to its newline

    # -------------------------------------------------------------- raw line I/O

    def _wait(self, readable: bool, deadline: float) -> bool:
        """Wait until the channel is readable/writable; False when the deadline passed."""
        wake = self._client._wake_r
        while True:
            if self._client.closed:
                raise MdataError("the metadata client was closed")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            reads, writes = ([self._fd, wake], []) if readable else ([wake], [self._fd])
            try:
                ready_r, ready_w, _ = select.select(reads, writes, [], min(left, 1.0))
            except InterruptedError:
                continue
            if self._fd in ready_r or self._fd in ready_w:
                return True

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not self._wait(False, deadline):
                raise MdataTimeout("the metadata channel did not take our request in time")
            try:
                sent = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise MdataError(f"writing to the metadata channel failed ({exc.strerror})") from exc
            view = view[sent:]

    def _fill(self, deadline: float) -> bool:
        """Read what is there into the buffer; False when the deadline passed first."""
        if not self._wait(True, deadline):
            return False
        try:
            chunk = os.read(self._fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise MdataError("the metadata channel hung up (EIO)") from exc
            raise MdataError(f"reading the metadata channel failed ({exc.strerror})") from exc
        if not chunk:
            raise MdataError("the host closed the metadata channel")
        self._buffer += chunk
        return True

    def readline(self, deadline: float) -> bytes:
        """The next whole line (without its newline); MdataTimeout at the deadline.

        A line longer than MAX_LINE is dropped whole (it cannot be a frame) and
        the wait goes on for the next one.
        """
        while True:
            cut = self._buffer.find(b"\n")
            if cut >= 0:
                line = bytes(self._buffer[:cut])
                del self._buffer[: cut + 1]
                if self._skipping:
                    self._skipping = False
                    continue
                return line
            if len(self._buffer) > mdata.MAX_LINE:
                log.debug("dropping an over-long line from the metadata channel")
                self._buffer.clear()
                self._skipping = True
            if not self._fill(deadline):
                raise MdataTimeout("the host did not answer in time")

    def drain(self, quiet: float, limit: float) -> int:
        """Drop pending input until the line is quiet for `quiet` s (at most `limit` s)."""
        dropped = len(self._buffer)
        self._buffer.clear()
        self._skipping = False
        stop = time.monotonic() + limit
        while time.monotonic() < stop:
            before = len(self._buffer)
            if not self._fill(min(stop, time.monotonic() + quiet)):
                break
            dropped += len(self._buffer) - before
            self._buffer.clear()
        return dropped

    # -------------------------------------------------------------- protocol

    def reset(self, timeout: float) -> None:
        """Send a bare newline until the host says `invalid command` (a line boundary)."""
        deadline = time.monotonic() + timeout
        attempt = min(timeout, max(self._client.reset_timeout, 0.05))
        while True:
            self.write(mdata.RESET, deadline)
            until = min(deadline, time.monotonic() + attempt)
            try:
                while True:
                    line = self.readline(until).strip()
                    if line.decode("ascii", "replace") == mdata.INVALID_COMMAND:
                        return
            except MdataTimeout:
                if time.monotonic() >= deadline:
                    raise MdataTimeout(
                        "the host did not answer a newline with 'invalid command' "
                        "(is the host's metadata service running?)"
                    ) from None

    def negotiate(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.write(mdata.NEGOTIATE, deadline)
        line = ""
        while True:
            try:
                line = self.readline(deadline).strip().decode("ascii", "replace")
            except MdataTimeout:
                if line:  # only 'invalid command' came: that was the answer
                    break
                raise MdataTimeout("the host did not answer NEGOTIATE V2") from None
            if line != mdata.INVALID_COMMAND:
                break
            # A late answer to one of reset()'s newlines, or a version-1 host's answer:
            # wait a little for another line before taking it as the answer.
            deadline = min(deadline, time.monotonic() + self._client.reset_timeout)
        if line != mdata.V2_OK:
            shown = "".join(c if c.isprintable() else "?" for c in line[:40])
            raise MdataV1Only(
                f"the host answered {shown!r} to NEGOTIATE V2: it speaks only metadata protocol "
                "version 1, which has no checksums or request ids and is not used"
            )

    def request(self, code: str, payload: bytes | None, timeout: float) -> mdata.Frame:
        """Send one request and wait for the answer that carries its request id."""
        request_id = secrets.token_hex(4)
        deadline = time.monotonic() + timeout
        self.write(mdata.encode_frame(request_id, code, payload), deadline)
        while True:
            try:
                line = self.readline(deadline)
            except MdataTimeout:
                raise MdataTimeout(f"the host did not answer {code} within {timeout:g}s") from None
            try:
                frame = mdata.decode_frame(line)
            except mdata.MdataProtocolError as exc:
                log.debug("dropped a line from the metadata channel: %s", exc)
                continue
            if frame.request_id != request_id:
                log.debug("dropped an answer to another request (%s)", frame.request_id)
                continue
            return frame

    def _answer(self, what: str, frame: mdata.Frame) -> bytes | None:
        if frame.code == mdata.SUCCESS:
            return frame.payload if frame.payload is not None else b""
        if frame.code == mdata.NOTFOUND:
            return None
        if frame.code == mdata.FAILURE:
            raise MdataFailure(what, mdata.failure_message(frame.payload))
        raise MdataError(f"the host answered {what} with {frame.code}")

    def get(self, key: str) -> bytes | None:
        """A key's value; None when the host has no such key. MdataFailure on FAILURE."""
        mdata.check_key(key)
        frame = self.request(mdata.GET, key.encode("utf-8"), self._client.timeout)
        return self._answer(f"GET {key}", frame)

    def keys(self) -> tuple[str, ...]:
        """The custom (non-sdc:) keys the host lists."""
        frame = self.request(mdata.KEYS, None, self._client.timeout)
        return mdata.keys_of(self._answer("KEYS", frame))

    def put(self, key: str, value: bytes) -> None:
        """Set a key (guests may not write sdc: keys: the host answers FAILURE)."""
        frame = self.request(mdata.PUT, mdata.put_payload(key, value), self._client.put_timeout)
        if self._answer(f"PUT {key}", frame) is None:
            raise MdataError(f"the host answered PUT {key} with NOTFOUND")

    def delete(self, key: str) -> None:
        """Remove a key (SUCCESS also when it did not exist)."""
        mdata.check_key(key)
        frame = self.request(mdata.DELETE, key.encode("utf-8"), self._client.put_timeout)
        self._answer(f"DELETE {key}", frame)


def _make_raw(fd: int) -> None:
    """Raw 8-bit mode, as mdata-client sets it; a port that is not a tty is left alone."""
    try:
        attrs = termios.tcgetattr(fd)
    except termios.error:
        return  # e.g. a virtio console port: no line discipline to turn off
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(
        termios.BRKINT
        | termios.ICRNL
        | termios.INPCK
        | termios.ISTRIP
        | termios.IXON
        | termios.INLCR
        | termios.IGNCR
    )
    oflag &= ~termios.OPOST
    # CLOCAL: no modem lines to wait for (a virtual UART may never raise carrier detect).
    cflag = (
        (cflag & ~(termios.CSIZE | termios.PARENB | termios.HUPCL))
        | termios.CS8
        | termios.CREAD
        | termios.CLOCAL
    )
    lflag &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cc = list(cc)
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class MdataClient:
    """Sessions on one metadata channel (a serial device or a unix socket path).

    Thread-safe: a session holds a thread lock as well as the record lock on
    the port (POSIX record locks do not exclude threads of one process).
    `close()` ends a session that is waiting and refuses new ones.
    """

    def __init__(
        self,
        path: str = DEFAULT_DEVICE,
        *,
        timeout: float = 10.0,
        put_timeout: float = 15.0,
        lock_timeout: float = 10.0,
        drain: float = 0.1,
        drain_limit: float = 2.0,
        reset_timeout: float = 2.0,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.put_timeout = put_timeout
        self.lock_timeout = lock_timeout
        self.drain_quiet = drain
        self.drain_limit = drain_limit
        self.reset_timeout = reset_timeout
        self.closed = False
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # -------------------------------------------------------------- opening

    def _open_socket(self, info: os.stat_result) -> tuple[int, socket.socket]:
        if info.st_uid not in (0, os.geteuid()):
            raise MdataUnsafeChannel(f"{self.path} is owned by uid {info.st_uid}, not root: not used")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(min(self.timeout, 5.0))
            sock.connect(self.path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in (0, os.geteuid()):
                raise MdataUnsafeChannel(
                    f"the process serving {self.path} runs as uid {uid}, not root: not used"
                )
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise MdataError(f"cannot connect to {self.path} ({exc.strerror or exc})") from exc
        except BaseException:
            sock.close()
            raise
        return sock.fileno(), sock

    def _open_device(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise MdataError(f"cannot open {self.path} ({exc.strerror})") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISCHR(info.st_mode):
                raise MdataUnsafeChannel(f"{self.path} is not a character device or a socket: not used")
            if info.st_uid not in (0, os.geteuid()):
                raise MdataUnsafeChannel(f"{self.path} is owned by uid {info.st_uid}, not root: not used")
            if info.st_mode & 0o006:
                raise MdataUnsafeChannel(
                    f"{self.path} is readable or writable by every user "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}): "
                    "not used; make it 0660 or stricter"
                )
            self._lock_port(fd)  # first: never change the line while another client uses it
            _make_raw(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lock_port(self, fd: int) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise MdataError(f"cannot lock {self.path} ({exc.strerror})") from exc
            if time.monotonic() >= deadline or self.closed:
                raise MdataTimeout(f"{self.path} stayed locked by another client for {self.lock_timeout:g}s")
            time.sleep(0.05)

    def _open(self) -> tuple[int, socket.socket | None]:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise MdataError(f"cannot open {self.path} ({exc.strerror})") from exc
        if stat.S_ISSOCK(info.st_mode):
            return self._open_socket(info)
        return self._open_device(), None

    # -------------------------------------------------------------- sessions

    def _acquire(self, wait: float) -> None:
        """Take the thread lock, in slices so that close() is noticed while waiting."""
        deadline = time.monotonic() + wait
        while not self._lock.acquire(timeout=0.2):
            if self.closed:
                raise MdataError("the metadata client was closed")
            if time.monotonic() >= deadline:
                raise MdataTimeout("another transaction held the metadata channel for too long")

    @contextlib.contextmanager
    def session(self, lock_wait: float | None = None) -> Iterator[MdataSession]:
        """An open, locked, drained and negotiated channel, closed (and unlocked) afterwards.

        `lock_wait` bounds the wait for another thread's session (default: a lock
        timeout plus a write's).
        """
        self._acquire(self.lock_timeout + self.put_timeout if lock_wait is None else lock_wait)
        try:
            if self.closed:
                raise MdataError("the metadata client was closed")
            fd, sock = self._open()
            try:
                channel = MdataSession(self, fd, sock)
                dropped = channel.drain(self.drain_quiet, self.drain_limit)
                if dropped:
                    log.debug("dropped %d bytes pending on %s", dropped, self.path)
                channel.reset(self.timeout)
                channel.negotiate(self.timeout)
                yield channel
            finally:
                if sock is not None:
                    sock.close()
                else:
                    os.close(fd)  # also releases the record lock
        finally:
            self._lock.release()

    def close(self) -> None:
        """Wake a session that is waiting (it raises MdataError) and refuse new ones."""
        self.closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
