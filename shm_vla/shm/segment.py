"""Named shared-memory segments: naming, header, permissions, single writer, stale detection.

A segment is ``/<prefix>.<instance>.<stream>`` (a POSIX shm object, /dev/shm on Linux)
opened through posix_ipc and mapped with mmap. It starts with a fixed 4 KiB header:

    magic, layout version, kind, the layout (JSON: dtype, shape, slot count, extras),
    writer pid and the writer's process start time (for people: liveness is the lock below).

One writer per segment: the writer holds an exclusive ``flock`` on the segment's file
descriptor for its whole life. The kernel drops the lock when the writer dies, however it
dies, so a second writer is refused while the first lives and a stale segment (left by a
dead writer) is re-initialised by the next one. That lock is the one liveness rule
(``writer_alive``): ls, stat, ``shm-vla run`` and clean all ask it. Readers never lock
anything: they look the lock up in /proc/locks.

No half-made segment: /dev/shm is a tmpfs, where a page is allocated when it is first
touched, and touching one when the tmpfs is full is SIGBUS, in whichever process touches
it. So a segment is created in one step that either completes or leaves nothing:

* the pages are allocated before the size becomes visible: ``posix_fallocate`` on the
  empty object allocates every page and only then sets the size (tmpfs gives back what it
  allocated when it fails), so a segment is either 0 bytes long or complete with its pages
  (there is no ``ftruncate`` first, which would make a full-length object without pages);
* the header is published last (the magic is written last): readers refuse a segment
  without it ("being initialised") and retry;
* on any failure after the writer took the lock (no room, a bad group, a layout too long)
  the name is unlinked, so the next writer or reader never finds a broken object.

Why not build under a temporary name and rename it into place? A restarted writer must
take a stale segment over *in place* (readers stay attached to the same object), so the
final name is where the lock lives anyway; a second name would need its own protocol
against racing writers (rename replaces an existing name), and a writer killed while
building would leave a full-size temporary that nobody owns. Here a writer killed at any
point leaves either an empty object or a complete one with an unpublished header; both
hold a free lock, so the next writer re-initialises them and ``shm clean`` removes them.

Readers never add pages: a reader maps only a segment that is fully allocated (its
allocated blocks cover its size) and at least as long as its header says, and maps it
read-only (PROT_READ from an O_RDONLY descriptor); a segment that is not is refused with
one clear error, never a SIGBUS. (On tmpfs even a read of a missing page allocates one,
so read-only alone would not be enough.) ``free_bytes`` and ``footprint`` let a launcher
check before it starts anything that /dev/shm can hold every segment of an instance.
"""
from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import posix_ipc

MAGIC = b"SHMVLA\x00\x01"
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
LAYOUT_JSON_BYTES = 3072
SHM_DIR = Path("/dev/shm")
DEFAULT_PREFIX = "shm-vla"

HEADER_DTYPE = np.dtype([
    ("magic", "S8"),
    ("version", "<u4"),
    ("header_bytes", "<u4"),
    ("total_bytes", "<u8"),
    ("writer_pid", "<u8"),
    ("writer_start_ticks", "<u8"),   # /proc/<pid>/stat field 22: tells a reused pid apart
    ("created_wall_ns", "<u8"),
    ("generation", "<u8"),           # bumped at every (re)initialisation by a writer
    ("layout_len", "<u4"),
    ("_pad", "<u4"),
    ("layout", f"S{LAYOUT_JSON_BYTES}"),
])
assert HEADER_DTYPE.itemsize <= HEADER_BYTES


class ShmError(RuntimeError):
    """Base class for clear, user-facing shared-memory errors."""


class SegmentMissing(ShmError):
    pass


class LayoutMismatch(ShmError):
    """A segment is not what this reader expects (record type or shape, metadata layout,
    layout version). `writer_pid`: the segment's writer if it was alive when it was refused,
    else None; a live writer that stays incompatible is a configuration conflict
    (process.attach_when_ready)."""
    writer_pid: int | None = None


class IncompatibleStream(LayoutMismatch):
    """A ring of the expected record type, written for another configuration: a value its
    writer recorded at creation differs from this reader's (camera.channel_order,
    sensor.force_position), or the record lacks a field the reader needs."""


class WriterBusy(ShmError):
    """A live writer already owns the segment."""


class ShmFull(ShmError):
    """/dev/shm cannot hold a segment: a process exits with EXIT_SHM_FULL, not 1."""


# The exit status of a process that could not get its shared memory (sysexits EX_TEMPFAIL).
# Not 1: restarting at once cannot help, so the supervisor retries it only a few times, with
# its longest back-off, and the systemd units do not restart it (RestartPreventExitStatus).
EXIT_SHM_FULL = 75


def segment_name(instance: str, stream: str, prefix: str = DEFAULT_PREFIX) -> str:
    if not instance or "/" in instance or "." in instance:
        raise ShmError(f"invalid instance name {instance!r}: non-empty, no '/' or '.'")
    return f"/{prefix}.{instance}.{stream}"


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces or ')': fields resume after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19])  # field 22 overall


def writer_alive(fd: int) -> bool:
    """The one liveness rule: a segment's writer is alive while it holds the segment's flock.

    The kernel drops the lock when the writer exits, however it exits: a zombie (exited,
    not yet reaped) holds nothing, and neither does a reused pid. Asking takes no lock
    (a reader never disturbs a writer, a takeover or `shm clean`): the kernel's table of
    held locks, /proc/locks, is searched for an exclusive flock on this object. That
    table hides the locks of processes outside the reader's pid namespace, so an observer
    must share the pipeline's (or be in the host's). `remove_stale` applies the same rule
    with the exclusive lock it unlinks under.
    """
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        for line in locks:
            # "12: FLOCK  ADVISORY  WRITE 4711 00:1b:3466 0 EOF"; a waiter has "->" after the number
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == key:
                return True
    return False


@dataclass
class SegmentInfo:
    name: str
    size_bytes: int
    layout: dict | None
    writer_pid: int
    alive: bool
    error: str = ""


class Segment:
    """A mapped segment. Use :meth:`create` (writer) or :meth:`attach` (reader)."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, writer: bool):
        self.name = name
        self.fd = fd
        self.mm = mm
        self.writer = writer
        self.header = np.ndarray((), HEADER_DTYPE, buffer=mm, offset=0)
        self.reused = False
        self.inode = os.fstat(fd).st_ino

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, name: str, layout: dict, data_bytes: int, *, group: str = "",
               lock_timeout_s: float = 0.5) -> "Segment":
        """Create a segment as its one writer, or take over one left by a dead writer.

        A stale segment with the same layout and size is kept (same object, so readers
        stay attached and the data stays readable); ``reused`` is then True and the caller
        repairs what a mid-write death may have left. Any other stale segment is replaced.
        Create, reserve and publish are one step: on any failure the name is unlinked.
        """
        text = _layout_text(name, layout)
        total = HEADER_BYTES + int(data_bytes)
        mode = 0o660 if group else 0o600
        for _ in range(3):
            fd = posix_ipc.SharedMemory(name, posix_ipc.O_CREAT, mode=mode, size=0).fd
            try:
                _lock_writer(fd, name, lock_timeout_s)
            except BaseException:
                os.close(fd)
                raise
            try:
                if not _is_current(name, fd):      # replaced while we waited for its lock
                    os.close(fd)
                    continue
                # From here on this process is the one writer of the object under the name.
                size = os.fstat(fd).st_size
                if size not in (0, total) or (size and not _same_layout(fd, layout)):
                    _unlink_if_current(name, fd)   # stale and different: start afresh
                    os.close(fd)
                    continue
                _set_permissions(fd, mode, group)
                _reserve(fd, name, total)          # the size appears only with every page
                mm = _map(fd, total, writable=True)
            except BaseException:
                _unlink_if_current(name, fd)       # never leave a half-made segment behind
                os.close(fd)
                raise
            seg = cls(name, fd, mm, writer=True)
            seg.reused = size == total
            seg._init_header(text, total)          # publishes: the magic goes last
            return seg
        raise ShmError(f"{name}: could not create the segment (it keeps being replaced)")

    def _init_header(self, text: bytes, total: int) -> None:
        h = self.header
        previous_generation = int(h["generation"]) if bytes(h["magic"]) == MAGIC else 0
        h["magic"] = b""  # invalid while (re)initialising: readers refuse a half-made header
        h["version"] = LAYOUT_VERSION
        h["header_bytes"] = HEADER_BYTES
        h["total_bytes"] = total
        h["writer_pid"] = os.getpid()
        h["writer_start_ticks"] = process_start_ticks(os.getpid()) or 0
        h["created_wall_ns"] = time.time_ns()
        h["generation"] = previous_generation + 1
        h["layout_len"] = len(text)
        h["layout"] = text
        h["magic"] = MAGIC

    @classmethod
    def attach(cls, name: str, layout: dict | None = None, *, read_only: bool = True) -> "Segment":
        """Map an existing segment as a reader; check its layout if given.

        Readers map read-only by default (PROT_READ from an O_RDONLY descriptor): they
        never write shared memory, and observers (stat, ls) cannot disturb the pipeline
        even by mistake. A segment that is not fully allocated, or shorter than its header
        says, is refused with one clear error (mapping it could SIGBUS, or grow it).
        """
        try:
            shm = posix_ipc.SharedMemory(name, 0, read_only=read_only)
        except posix_ipc.ExistentialError:
            raise SegmentMissing(f"shared-memory segment {name} does not exist "
                                 "(is its writer running, and is the instance name right?)") from None
        except posix_ipc.PermissionsError:
            raise ShmError(f"no permission to open {name} (segments are 0600/0660)") from None
        fd = shm.fd
        try:
            size = _check_complete(fd, name)
            # populate the page tables now only where that cannot add a page to the segment
            mm = _map(fd, size, writable=not read_only, populate=read_only)
        except BaseException:
            os.close(fd)
            raise
        seg = cls(name, fd, mm, writer=False)
        try:
            seg.check_layout(layout)
            if int(seg.header["total_bytes"]) > size:
                raise ShmError(f"{name} is {size} bytes, shorter than its header says "
                               f"({int(seg.header['total_bytes'])}); refusing it")
        except BaseException as exc:
            seg.refuse(exc)
            raise
        return seg

    # ------------------------------------------------------------------ header access
    def layout(self) -> dict:
        h = self.header
        if bytes(h["magic"]) != MAGIC:
            raise ShmError(f"{self.name}: bad magic (not a shm-vla segment, or being initialised)")
        if int(h["version"]) != LAYOUT_VERSION:
            raise LayoutMismatch(f"{self.name}: layout version {int(h['version'])}, expected {LAYOUT_VERSION}")
        return json.loads(bytes(h["layout"])[: int(h["layout_len"])])

    def check_layout(self, expected: dict | None) -> dict:
        found = self.layout()
        if expected is not None:
            want = json.loads(json.dumps(expected, sort_keys=True))
            if found != want:
                diff = sorted(k for k in set(found) | set(want) if found.get(k) != want.get(k))
                detail = "; ".join(f"{k}: segment has {found.get(k)!r}, expected {want.get(k)!r}" for k in diff)
                raise LayoutMismatch(f"{self.name}: layout differs ({detail})")
        return found

    def replaced(self) -> bool:
        """True when the name now refers to another object (a writer re-created it)."""
        try:
            return (SHM_DIR / self.name.lstrip("/")).stat().st_ino != self.inode
        except FileNotFoundError:
            return True

    @property
    def writer_pid(self) -> int:
        return int(self.header["writer_pid"])

    def writer_alive(self) -> bool:
        return self.writer or writer_alive(self.fd)

    def refuse(self, exc: BaseException) -> None:
        """A reader gives the segment up because of `exc`: note a live writer on a
        LayoutMismatch (see there), then close."""
        if isinstance(exc, LayoutMismatch):
            exc.writer_pid = self.writer_pid if self.writer_alive() else None
        self.close()

    @property
    def address(self) -> int:
        """The mapping's first byte in this process (page aligned; e.g. to register it with
        CUDA as page-locked memory). Valid while the segment is open."""
        first = np.frombuffer(self.mm, np.uint8, count=1)    # read-only maps too; released below
        try:
            return first.ctypes.data
        finally:
            del first

    def data(self, offset: int = 0, nbytes: int | None = None) -> memoryview:
        start = HEADER_BYTES + offset
        end = len(self.mm) if nbytes is None else start + nbytes
        return memoryview(self.mm)[start:end]

    def close(self) -> None:
        """Unmap; the writer's lock is released with its descriptor. Leaves the name."""
        if self.mm is None:
            return
        self.header = None
        try:
            self.mm.close()
        except BufferError:
            # numpy views into the map are still alive somewhere; the map goes with them.
            pass
        self.mm = None
        os.close(self.fd)

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass


# ---------------------------------------------------------------------- helpers
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _map(fd: int, size: int, writable: bool, populate: bool = True) -> mmap.mmap:
    """Map shared, by default with the page tables populated now (MAP_POPULATE): the first
    records then pay no page faults, which would otherwise land on the first frames' latency.
    Only for a segment whose pages all exist: populating a hole allocates a page."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | (_POPULATE if populate else 0), prot=prot)


def _check_complete(fd: int, name: str) -> int:
    """The size of a segment a reader may map: initialised and with every page allocated."""
    st = os.fstat(fd)
    if st.st_size < HEADER_BYTES:
        raise ShmError(f"{name} is not initialised yet ({st.st_size} bytes)")
    allocated = st.st_blocks * 512
    if allocated < st.st_size:
        raise ShmError(f"{name} is not fully allocated ({allocated} of {st.st_size} bytes: a half-made "
                       "segment, e.g. from a full /dev/shm); refusing to map it")
    return st.st_size


def _layout_text(name: str, layout: dict) -> bytes:
    text = json.dumps(layout, sort_keys=True).encode()
    if len(text) > LAYOUT_JSON_BYTES:
        raise ShmError(f"{name}: layout description too long ({len(text)} bytes)")
    return text


def _is_current(name: str, fd: int) -> bool:
    """True while the name still refers to the object open on fd."""
    try:
        return (SHM_DIR / name.lstrip("/")).stat().st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _unlink_if_current(name: str, fd: int) -> None:
    if _is_current(name, fd):
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass


def _lock_writer(fd: int, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    pid = _read_writer_pid(fd)
    raise WriterBusy(f"{name} already has a live writer (pid {pid}); refusing a second writer")


def _same_layout(fd: int, layout: dict) -> bool:
    try:
        head = np.frombuffer(os.pread(fd, HEADER_DTYPE.itemsize, 0), HEADER_DTYPE)[0]
        if bytes(head["magic"]) != MAGIC or int(head["version"]) != LAYOUT_VERSION:
            return False
        found = json.loads(bytes(head["layout"])[: int(head["layout_len"])])
    except (OSError, ValueError, IndexError):
        return False
    return found == json.loads(json.dumps(layout, sort_keys=True))


def _read_writer_pid(fd: int) -> int:
    try:
        raw = os.pread(fd, HEADER_DTYPE.itemsize, 0)
        return int(np.frombuffer(raw, HEADER_DTYPE)[0]["writer_pid"])
    except (OSError, ValueError, IndexError):
        return 0


def _set_permissions(fd: int, mode: int, group: str) -> None:
    # shm_open applies the umask; set the mode explicitly so it is what config says.
    if group:
        import grp
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ShmError(f"config shm.group: group {group!r} does not exist") from None
        os.fchown(fd, -1, gid)
    os.fchmod(fd, mode)


def _reserve(fd: int, name: str, total: int) -> None:
    """Allocate every page now, and only then let the size appear (no ftruncate first).

    A sparse tmpfs object would SIGBUS on the first touch of a page when /dev/shm is full;
    posix_fallocate on tmpfs allocates all pages or none, and sets the size on success.
    """
    try:
        os.posix_fallocate(fd, 0, total)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise ShmFull(f"cannot reserve {total} bytes for {name}: /dev/shm is full "
                          f"({free_bytes()} bytes free; {os.strerror(exc.errno)})") from None
        raise


def footprint(data_bytes: int) -> int:
    """Bytes of /dev/shm that a segment with `data_bytes` after its header takes (whole pages)."""
    total = HEADER_BYTES + int(data_bytes)
    return -(-total // mmap.PAGESIZE) * mmap.PAGESIZE


def free_bytes() -> int:
    """Bytes that /dev/shm can still allocate."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def check_room(needed_bytes: int, what: str) -> None:
    """ShmFull unless /dev/shm can hold `needed_bytes` more (one line: needed and free)."""
    free = free_bytes()
    if needed_bytes > free:
        raise ShmFull(f"/dev/shm has {_mib(free)} free, {what} needs {_mib(needed_bytes)} "
                      f"({needed_bytes} bytes); free some (shm-vla shm ls, df /dev/shm) or "
                      "enlarge it (mount -o remount,size=... /dev/shm)")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------------- listing
def instance_segments(instance: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    head = f"{prefix}.{instance}."
    if not SHM_DIR.is_dir():
        return []
    return sorted("/" + p.name for p in SHM_DIR.iterdir() if p.name.startswith(head))


def inspect(name: str) -> SegmentInfo:
    """Describe a segment without disturbing it (no locks taken)."""
    path = SHM_DIR / name.lstrip("/")
    try:
        size = path.stat().st_size
        seg = Segment.attach(name, read_only=True)
    except ShmError as exc:
        return SegmentInfo(name, path.stat().st_size if path.exists() else 0, None, 0, False, str(exc))
    try:
        return SegmentInfo(name, size, seg.layout(), seg.writer_pid, seg.writer_alive())
    finally:
        seg.close()


def remove_stale(name: str) -> bool:
    """Unlink a segment whose writer is gone. Never removes a live writer's segment."""
    try:
        shm = posix_ipc.SharedMemory(name, 0)
    except posix_ipc.ExistentialError:
        return False
    try:
        fcntl.flock(shm.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(shm.fd)
        return False  # a live writer holds it (the writer_alive rule, taken exclusively to unlink)
    try:
        posix_ipc.unlink_shared_memory(name)
    finally:
        os.close(shm.fd)
    return True


def remove_instance(instance: str, prefix: str = DEFAULT_PREFIX) -> int:
    """Unlink every stale segment of an instance (tests, `shm clean`)."""
    return sum(remove_stale(name) for name in instance_segments(instance, prefix))
