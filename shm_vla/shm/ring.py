"""A ring of N fixed-size records in one segment, each slot guarded by a seqlock.

Data area layout (after the 4 KiB segment header):

    control   128 B : head (u64, records published so far) | futex word (u32)
    slot[i]   stride: seqlock u64 + pad (64 B) | meta (96 B) | payload (record dtype x shape)

Record number r lives in slot r % depth. The single writer fills slot `head % depth`
(sequence odd while it writes, even when done) and then publishes by incrementing head.
Readers copy a range of published records into caller buffers, then check that every
slot's sequence is even and unchanged and that every slot still holds the record number
expected: a record torn by a concurrent write, or overwritten since, fails the check and
the read is retried. Readers never write to shared memory and never block the writer:
they map the segment read-only (the futex wait needs only read access).
Readers touch at most depth - 1 records, so they never wait on the slot being written.

Writers fill a slot through a loan: ``with ring.loan(src_ts=...) as slot: <fill slot>``
commits it on leaving the block and aborts it on any exception (a KeyboardInterrupt too), so
no error path can leave a slot open. The metadata is given up front, which every writer
knows before it fills the slot; the loan object is the ring's own, reused, so a loan
allocates nothing. begin/commit/abort are the protocol underneath.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from . import segment as segmod
from .barrier import fence
from .notify import Futex

LABEL_BYTES = 40
CAPTURE_UNKNOWN_NS = -1
META_DTYPE = np.dtype([
    ("record", "<i8"),        # record number (monotonic from 0); -1 = invalid
    ("src_ts", "<f8"),        # sender's timestamp (its clock, seconds)
    ("send_ts", "<f8"),       # sender's send timestamp (its clock, seconds)
    ("recv_mono_ns", "<i8"),  # our CLOCK_MONOTONIC at receipt
    ("recv_wall_ns", "<i8"),  # our wall clock at receipt
    ("aux", "<f8"),           # per-stream value, named per stream (meta_dtype; pipeline.py)
    ("capture_mono_ns", "<i8"),  # capture time on our CLOCK_MONOTONIC (sender clock through the
                              # estimated offset); -1 = not known (no offset established yet)
    ("label", f"S{LABEL_BYTES}"),  # per-stream text (e.g. camera name, truncated)
])
assert META_DTYPE.itemsize == 96
AUX_INDEX = META_DTYPE.names.index("aux")


def meta_dtype(aux_field: str = "aux") -> np.dtype:
    """The metadata record of a stream whose per-stream value is called `aux_field` (e.g.
    "jpeg_bytes"): the same bytes as META_DTYPE, so copies between the two work by position."""
    names = list(META_DTYPE.names)
    names[AUX_INDEX] = aux_field
    return np.dtype({"names": names, "formats": [META_DTYPE[i] for i in range(len(names))],
                     "offsets": [META_DTYPE.fields[n][1] for n in META_DTYPE.names],
                     "itemsize": META_DTYPE.itemsize})


def _generic_meta(descr) -> list:
    """A layout's meta description with the per-stream name put back to "aux"."""
    descr = [list(field) for field in descr]
    if len(descr) > AUX_INDEX:
        descr[AUX_INDEX][0] = "aux"
    return descr


_META_DESCR_JSON = json.loads(json.dumps(META_DTYPE.descr))
CONTROL_BYTES = 128
SEQ_BYTES = 64
ALIGN = 64
DEFAULT_READ_TIMEOUT_S = 0.05


class ReadTimeout(segmod.ShmError):
    """A consistent read was not possible within the bounded time."""


class WriterDied(ReadTimeout):
    """The writer died in the middle of a write; a restarted writer repairs the slot."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def ring_layout(dtype: np.dtype, shape: tuple, depth: int, extras: dict | None = None,
                aux_field: str = "aux") -> dict:
    dtype = np.dtype(dtype)
    payload = int(dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
    layout = {
        "kind": "ring",
        "dtype": np.lib.format.dtype_to_descr(dtype),
        "shape": list(shape),
        "depth": int(depth),
        "payload_bytes": payload,
        "stride": SEQ_BYTES + META_DTYPE.itemsize + _align(payload),
        "meta": meta_dtype(aux_field).descr,   # another meta layout is refused at attach
    }
    if extras:
        layout["extras"] = extras
    return layout


def ring_data_bytes(layout: dict) -> int:
    """Bytes after the segment header: the control block and every slot."""
    return CONTROL_BYTES + int(layout["depth"]) * int(layout["stride"])


def ring_footprint(layout: dict) -> int:
    """Bytes of /dev/shm the ring's segment takes (what `shm-vla run` checks before starting)."""
    return segmod.footprint(ring_data_bytes(layout))


@dataclass
class SinceResult:
    count: int       # records copied
    lost: int        # records overwritten before they could be read
    next_record: int  # pass this to the next since() call


class Ring:
    """One ring. Create as writer with :meth:`create`, attach as reader with :meth:`attach`."""

    def __init__(self, seg: segmod.Segment, layout: dict):
        self.seg = seg
        self.layout = layout
        self.name = seg.name
        self.dtype = np.lib.format.descr_to_dtype(_tupled(layout["dtype"]))
        self.shape = tuple(layout["shape"])
        self.depth = int(layout["depth"])
        self.stride = int(layout["stride"])
        buf = seg.mm
        needed = segmod.HEADER_BYTES + ring_data_bytes(layout)
        if len(buf) < needed:
            raise segmod.ShmError(f"{seg.name} is {len(buf)} bytes, shorter than its layout needs ({needed})")
        base = segmod.HEADER_BYTES
        self._head = np.ndarray((1,), np.uint64, buffer=buf, offset=base)
        self.futex = Futex(np.ndarray((1,), np.uint32, buffer=buf, offset=base + ALIGN))
        slots = base + CONTROL_BYTES
        self.seqs = np.ndarray((self.depth,), np.uint64, buffer=buf, offset=slots, strides=(self.stride,))
        # the metadata as the writer named it (its per-stream value under its own name)
        self.meta_dtype = meta_dtype(layout["meta"][AUX_INDEX][0]) if "meta" in layout else META_DTYPE
        self.meta = np.ndarray((self.depth,), self.meta_dtype, buffer=buf, offset=slots + SEQ_BYTES,
                               strides=(self.stride,))
        self.payload = np.ndarray((self.depth,) + self.shape, self.dtype, buffer=buf,
                                  offset=slots + SEQ_BYTES + META_DTYPE.itemsize,
                                  strides=(self.stride,) + _c_strides(self.shape, self.dtype.itemsize))
        # reader scratch, allocated once
        self._seq_before = np.empty(self.depth, np.uint64)
        self._seq_after = np.empty(self.depth, np.uint64)
        self._meta_scratch = np.empty(self.depth, self.meta_dtype)
        self._expect = np.arange(self.depth, dtype=np.int64)
        self._check = np.empty(self.depth, np.int64)
        # writer state: the slot being written (-1: none) and the one reusable loan
        self._writing = -1
        self._loan = Loan(self)
        self.retries = 0   # reader-side: reads retried because of a concurrent write

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, instance: str, stream: str, dtype, shape: tuple, depth: int, *,
               prefix: str = segmod.DEFAULT_PREFIX, group: str = "", extras: dict | None = None,
               aux_field: str = "aux") -> "Ring":
        """aux_field: the name of this stream's per-stream metadata value (readers see it so)."""
        if depth < 2:
            raise ValueError(f"ring {stream}: depth must be >= 2, got {depth}")
        layout = ring_layout(dtype, shape, depth, extras, aux_field)
        seg = segmod.Segment.create(segmod.segment_name(instance, stream, prefix), layout,
                                    ring_data_bytes(layout), group=group)
        ring = cls(seg, seg.layout())
        if seg.reused:
            ring._repair()
        else:
            ring.seqs[:] = 0
            ring.meta["record"] = -1
            ring._head[0] = 0
        return ring

    @classmethod
    def attach(cls, instance: str, stream: str, dtype=None, shape: tuple | None = None, *,
               prefix: str = segmod.DEFAULT_PREFIX, extras: dict | None = None, fields: tuple = ()) -> "Ring":
        """Map a ring read-only, refusing one this reader cannot use.

        dtype, shape: the record's (LayoutMismatch if they differ). extras: values the writer
        recorded at creation that must equal this reader's (e.g. {"channel_order": "RGB"});
        fields: fields the record must have, for a reader that does not know its whole dtype
        (IncompatibleStream for either). A refused ring is closed before the error is raised.
        """
        seg = segmod.Segment.attach(segmod.segment_name(instance, stream, prefix))   # read-only
        ring = None
        try:
            layout = seg.layout()
            if layout.get("kind") != "ring":
                raise segmod.LayoutMismatch(f"{seg.name}: not a ring (kind {layout.get('kind')!r})")
            if _generic_meta(layout.get("meta", [])) != _META_DESCR_JSON:
                raise segmod.LayoutMismatch(f"{seg.name}: record metadata layout differs from this version's "
                                            "(a segment left by another shm-vla version?)")
            ring = cls(seg, layout)
            if dtype is not None and np.dtype(dtype) != ring.dtype:
                raise segmod.LayoutMismatch(f"{seg.name}: record dtype {ring.dtype}, expected {np.dtype(dtype)}")
            if shape is not None and tuple(shape) != ring.shape:
                raise segmod.LayoutMismatch(f"{seg.name}: record shape {ring.shape}, expected {tuple(shape)}")
            ring._check_use(extras or {}, fields)
        except BaseException as exc:
            if ring is not None:
                ring._drop_views()               # so that the map can go at once
            seg.refuse(exc)
            raise
        return ring

    def _check_use(self, extras: dict, fields: tuple) -> None:
        written = self.layout.get("extras", {})
        for key, want in extras.items():
            if written.get(key) != want:
                raise segmod.IncompatibleStream(f"{self.name}: written with {key} {written.get(key)!r}, "
                                                f"this process's configuration says {want!r}")
        missing = [f for f in fields if f not in (self.dtype.names or ())]
        if missing:
            raise segmod.IncompatibleStream(f"{self.name}: its records have no field {', '.join(missing)}: "
                                            "not the ring this process reads")

    def _repair(self) -> None:
        """After a writer died: make every sequence even and invalidate a torn record."""
        odd = (self.seqs & 1).astype(bool)
        for i in np.flatnonzero(odd):
            self.meta["record"][i] = -1
            self.seqs[i] = self.seqs[i] + 1
        self.futex.post()

    def _drop_views(self) -> None:
        for attr in ("_head", "seqs", "meta", "payload", "futex"):
            setattr(self, attr, None)

    def new_meta(self, n: int) -> np.ndarray:
        """A metadata buffer for n records, with this stream's field names."""
        return np.zeros(n, self.meta_dtype)

    def close(self) -> None:
        self._drop_views()      # before unmapping: a live view keeps the map
        self.seg.close()

    def unlink(self) -> None:
        self.seg.unlink()

    # ------------------------------------------------------------------ writer
    @property
    def head(self) -> int:
        """Number of records published so far (= the next record number)."""
        return int(self._head[0])

    def loan(self, src_ts: float = 0.0, send_ts: float = 0.0, recv_mono_ns: int | None = None,
             recv_wall_ns: int | None = None, aux: float = 0.0, label: bytes = b"",
             capture_mono_ns: int = CAPTURE_UNKNOWN_NS) -> "Loan":
        """The next slot, on loan: ``with ring.loan(**meta) as slot:`` fill `slot` in place.

        Leaving the block commits the slot with this metadata (see commit(): recv_mono_ns and
        recv_wall_ns default to the time of the commit); an exception aborts it. The record
        number is `loan.record` afterwards.
        """
        loan = self._loan
        if self._writing >= 0:
            raise RuntimeError(f"{self.name}: a slot is already open (nested loan, or begin() without commit)")
        loan.src_ts, loan.send_ts, loan.recv_mono_ns, loan.recv_wall_ns = src_ts, send_ts, recv_mono_ns, recv_wall_ns
        loan.aux, loan.label, loan.capture_mono_ns = aux, label, capture_mono_ns
        return loan

    def begin(self) -> np.ndarray:
        """Open the next slot for writing; returns its payload view to fill in place.

        Prefer loan(), which cannot leave the slot open on an error path."""
        if self._writing >= 0:
            raise RuntimeError(f"{self.name}: a slot is already open (begin() twice without commit or abort)")
        slot = int(self._head[0]) % self.depth
        self.seqs[slot] += 1                       # odd: being written
        fence()
        self._writing = slot
        return self.payload[slot, ...]   # a view, also for 0-d records

    def commit(self, src_ts: float = 0.0, send_ts: float = 0.0, recv_mono_ns: int | None = None,
               recv_wall_ns: int | None = None, aux: float = 0.0, label: bytes = b"",
               capture_mono_ns: int = CAPTURE_UNKNOWN_NS) -> int:
        """Publish the slot opened by begin(); returns its record number."""
        slot = self._writing
        if slot < 0:
            raise RuntimeError(f"{self.name}: commit() without begin()")
        record = int(self._head[0])
        # one structured store for the whole meta record (field by field costs 7 numpy calls)
        self.meta[slot] = (record, src_ts, send_ts,
                           time.monotonic_ns() if recv_mono_ns is None else recv_mono_ns,
                           time.time_ns() if recv_wall_ns is None else recv_wall_ns, aux, capture_mono_ns,
                           label)
        fence()
        self.seqs[slot] += 1                       # even: done
        self._head[0] = record + 1
        self._writing = -1
        self.futex.post()
        return record

    def abort(self) -> None:
        """Give up the slot opened by begin() (e.g. a JPEG that failed to decode into it).

        The slot's old record is invalidated, since its payload may be half overwritten;
        it was outside every reader's reach (older than depth - 1) anyway.
        """
        slot = self._writing
        if slot < 0:
            raise RuntimeError(f"{self.name}: abort() without begin()")
        self.meta["record"][slot] = -1
        fence()
        self.seqs[slot] = self.seqs[slot] + 1
        self._writing = -1

    def write(self, payload, **meta) -> int:
        """Copy `payload` into the next slot and publish it; returns its record number."""
        with self.loan(**meta) as slot:
            np.copyto(slot, payload, casting="same_kind")
        return self._loan.record

    # ------------------------------------------------------------------ readers
    def wait(self, after_record: int, timeout_s: float) -> bool:
        """Block (no spinning) until a record numbered >= after_record exists, or timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.futex.value()
            if self.head > after_record:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.futex.wait(seen, left)

    def _copy_range(self, first: int, k: int, out: np.ndarray, dst: int, meta_out: np.ndarray) -> bool:
        """Copy records first..first+k-1 to out[dst:dst+k]; True if consistent."""
        if k == 1:
            return self._copy_one(first, out, dst, meta_out)
        a = first % self.depth
        n1 = min(k, self.depth - a)
        spans = ((a, 0, n1), (0, n1, k - n1)) if k > n1 else ((a, 0, n1),)
        before, after = self._seq_before[:k], self._seq_after[:k]
        for s, o, n in spans:
            before[o:o + n] = self.seqs[s:s + n]
        fence()
        for s, o, n in spans:
            if out is not None:
                out[dst + o:dst + o + n] = self.payload[s:s + n]
            meta_out[dst + o:dst + o + n] = self.meta[s:s + n]
        fence()
        for s, o, n in spans:
            after[o:o + n] = self.seqs[s:s + n]
        # consistent iff every sequence was even and unchanged and every slot held the
        # record expected (not one overwritten since)
        if before[k - 1] & 1 or (before & 1).any() or not np.array_equal(before, after):
            return False
        check = self._check[:k]
        np.subtract(meta_out["record"][dst:dst + k], first, out=check)
        return np.array_equal(check, self._expect[:k])

    def _copy_one(self, record: int, out: np.ndarray, dst: int, meta_out: np.ndarray) -> bool:
        """The single-record case (latest(), small since()), with scalar checks."""
        slot = record % self.depth
        seq = int(self.seqs[slot])
        if seq & 1:
            return False
        fence()
        if out is not None:
            out[dst] = self.payload[slot]
        meta_out[dst] = self.meta[slot]
        fence()
        return int(self.seqs[slot]) == seq and int(meta_out["record"][dst]) == record

    def _retry_or_fail(self, deadline: float) -> None:
        self.retries += 1
        if time.monotonic() < deadline:
            return
        slot = self.head % self.depth
        if int(self.seqs[slot]) & 1 and not self.seg.writer_alive():
            raise WriterDied(f"{self.name}: writer died mid-write (pid {self.seg.writer_pid}); "
                             "a restarted writer repairs the slot")
        raise ReadTimeout(f"{self.name}: no consistent read within the time bound ({self.retries} retries)")

    def window(self, n: int, out: np.ndarray | None, meta_out: np.ndarray | None = None,
               timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> int:
        """Copy the newest k = min(n, available) records into out[n-k:n], oldest first.

        Right-aligned so that a caller can zero-pad the front while a ring fills.
        Returns k. `out` has shape (>= n,) + record shape; `meta_out` (>= n,) of
        `ring.meta_dtype` (or META_DTYPE: the same bytes, copied by position).
        `out` None: the metadata only (cheap: e.g. to choose which frame to copy).
        """
        if n > self.depth - 1:
            raise ValueError(f"{self.name}: window {n} exceeds ring depth - 1 ({self.depth - 1})")
        meta_out = self._meta_scratch if meta_out is None else meta_out
        deadline = time.monotonic() + timeout_s
        while True:
            head = self.head
            k = min(n, head)
            if k == 0:
                return 0
            if self._copy_range(head - k, k, out, n - k, meta_out):
                return k
            self._retry_or_fail(deadline)

    def latest(self, out: np.ndarray, meta_out: np.ndarray | None = None,
               timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> int:
        """Copy the newest record into out[0]; returns its record number, or -1 if none."""
        meta_out = self._meta_scratch if meta_out is None else meta_out
        if self.window(1, out, meta_out, timeout_s) == 0:
            return -1
        return int(meta_out["record"][0])

    def since(self, record: int, out: np.ndarray, meta_out: np.ndarray, max_n: int | None = None,
              timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> SinceResult:
        """Copy records numbered >= record (oldest first) into out[0:count].

        For consumers that must see every record: if the reader fell behind by more than
        the ring holds, the overwritten records are reported as `lost`.
        """
        max_n = min(len(out), self.depth - 1) if max_n is None else min(max_n, len(out), self.depth - 1)
        deadline = time.monotonic() + timeout_s
        while True:
            head = self.head
            oldest = max(0, head - (self.depth - 1))
            start = max(record, oldest)
            k = min(max_n, head - start)
            if k <= 0:
                return SinceResult(0, max(0, oldest - record), max(record, oldest))
            if self._copy_range(start, k, out, 0, meta_out):
                return SinceResult(k, start - record if start > record else 0, start + k)
            self._retry_or_fail(deadline)

    # ------------------------------------------------------------------ validated views
    def peek(self, record: int) -> "PeekedRecord | None":
        """Record `record` in place (no copy), or None if it is not (or no longer) readable.

        For large frames: e.g. a host-to-device copy straight from shared memory. Use the
        payload, then check `.valid()`: False means the writer touched the slot meanwhile and
        whatever was read from it must be discarded.
        """
        if not 0 <= record < self.head or record < self.head - (self.depth - 1):
            return None
        slot = record % self.depth
        seq = int(self.seqs[slot])
        fence()
        if seq & 1 or int(self.meta["record"][slot]) != record:
            return None
        return PeekedRecord(self, slot, seq, record)

    def peek_latest(self) -> "PeekedRecord | None":
        """The newest record in place (see :meth:`peek`)."""
        return self.peek(self.head - 1)

    def health(self) -> str:
        """'ok', 'no writer' (writer gone, data still readable), or 'writer died mid-write'."""
        if self.seg.writer_alive():
            return "ok"
        if int(self.seqs[self.head % self.depth]) & 1:
            return "writer died mid-write"
        return "no writer"

    def age_ns(self, now_ns: int | None = None) -> int | None:
        """Age of the newest record on CLOCK_MONOTONIC, or None if empty (a cheap, unchecked read)."""
        head = self.head
        if head == 0:
            return None
        recv = int(self.meta["recv_mono_ns"][(head - 1) % self.depth])
        return (time.monotonic_ns() if now_ns is None else now_ns) - recv


class Loan:
    """A ring's slot on loan to its writer (Ring.loan); one per ring, reused for every record."""
    __slots__ = ("_ring", "src_ts", "send_ts", "recv_mono_ns", "recv_wall_ns", "aux", "label",
                 "capture_mono_ns", "record")

    def __init__(self, ring: Ring):
        self._ring = ring
        self.record = -1      # the record number of the last committed loan

    def __enter__(self) -> np.ndarray:
        return self._ring.begin()

    def __exit__(self, exc_type, exc, tb) -> bool:
        ring = self._ring
        if exc_type is not None:
            ring.abort()
            return False
        try:
            self.record = ring.commit(self.src_ts, self.send_ts, self.recv_mono_ns, self.recv_wall_ns, self.aux,
                                      self.label, self.capture_mono_ns)
        except BaseException:
            if ring._writing >= 0:     # the commit failed before publishing (e.g. a bad meta value)
                ring.abort()
            raise
        return False


class PeekedRecord:
    def __init__(self, ring: Ring, slot: int, seq: int, record: int):
        self.ring = ring
        self.slot = slot
        self.seq = seq
        self.record = record
        self.payload = ring.payload[slot, ...]
        self.meta = ring.meta[slot]

    def valid(self) -> bool:
        fence()
        return int(self.ring.seqs[self.slot]) == self.seq


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _tupled(descr):
    """JSON turns the dtype descr's tuples into lists; numpy wants tuples back."""
    if isinstance(descr, str):
        return descr
    out = []
    for field in descr:
        name, sub = field[0], field[1]
        sub = _tupled(sub) if isinstance(sub, list) else sub
        out.append((name, sub, tuple(field[2])) if len(field) > 2 else (name, sub))
    return out
