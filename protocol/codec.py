"""The only place where bytes become objects.

Wire format (msgpack, no extension types, nothing pickled)::

    message  = u16 LE header length | header | payload (raw bytes, SEND and REPLY only)
    header   = msgpack [type, origin, step, phase, round, kind, field...]
    SEND     = type 1, signature: bin(0 or 64)
    ECHO     = type 2, digest: bin(32), origin_signature: bin(0 or 64)
    READY    = type 3, digest: bin(32)
    FETCH    = type 4, digest: bin(32)
    REPLY    = type 5
    control  = msgpack [type, step]: CATCHUP = type 6, FINISHED = type 7 (no payload)

    array    = u16 LE header length | msgpack [dtype str, [dims]] | raw little-endian data
    frame    = u32 LE length | body

Decoding arbitrary bytes either returns a well-typed message or raises :class:`CodecError`;
no other exception escapes (the fuzz tests hold us to that). Arrays are rebuilt with
``numpy.frombuffer`` over the received buffer: no copy.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import numpy as np

from protocol.messages import (
    DIGEST_BYTES,
    SIGNATURE_BYTES,
    Catchup,
    Control,
    Echo,
    Fetch,
    FetchReply,
    Finished,
    InstanceId,
    Ready,
    Send,
    Tag,
    WireMessage,
)

#: Refuse larger frames before allocating anything for them (DESIGN 4.4).
FRAME_BYTES_MAX_DEFAULT: Final = 256 * 1024 * 1024
#: Tag fields and node ids are small non-negative integers; bound them on the wire.
FIELD_VALUE_MAX: Final = 2**31 - 1
#: Dtypes a vector may travel as: little-endian IEEE floats only.
ARRAY_DTYPES: Final = frozenset({"<f4", "<f8"})
ARRAY_DIMS_MAX: Final = 8

_SEND, _ECHO, _READY, _FETCH, _REPLY, _CATCHUP, _FINISHED = 1, 2, 3, 4, 5, 6, 7
_FIELDS = {_SEND: 1, _ECHO: 2, _READY: 1, _FETCH: 1, _REPLY: 0}
_TYPE_CODES: dict[type, int] = {
    Send: _SEND,
    Echo: _ECHO,
    Ready: _READY,
    Fetch: _FETCH,
    FetchReply: _REPLY,
    Catchup: _CATCHUP,
    Finished: _FINISHED,
}
_MESSAGE_HEADER_LEN = struct.Struct("<H")
_MESSAGE_HEADER_BYTES_MAX = 256
_HEADER_LEN = struct.Struct("<H")
_FRAME_LEN = struct.Struct("<I")


class CodecError(ValueError):
    """Bytes that are not a well-formed jungle message (always the sender's fault)."""


# --------------------------------------------------------------------------- messages


def encode(message: WireMessage) -> bytes:
    """Encode one message; the payload is copied once, into the result."""
    if isinstance(message, Catchup | Finished):
        return _encode_control(message)
    iid = message.iid
    head: list[Any] = [0, iid.origin, iid.tag.step, iid.tag.phase, iid.tag.round, iid.tag.kind]
    payload: bytes | memoryview = b""
    match message:
        case Send():
            head[0] = _SEND
            head.append(message.signature)
            payload = message.payload
        case Echo(digest=digest, origin_signature=signature):
            head[0] = _ECHO
            head += [digest, signature]
        case Ready(digest=digest):
            head[0] = _READY
            head.append(digest)
        case Fetch(digest=digest):
            head[0] = _FETCH
            head.append(digest)
        case FetchReply():
            head[0] = _REPLY
            payload = message.payload
    header: bytes = msgpack.packb(head, use_bin_type=True)
    return b"".join((_MESSAGE_HEADER_LEN.pack(len(header)), header, payload))


def decode(data: bytes | memoryview, payload_bytes_max: int | None = None) -> WireMessage:
    """Decode one message, or raise :class:`CodecError` saying what is wrong with it.

    A payload comes back as a ``memoryview`` into ``data``: no copy, and many receivers
    of one buffer (the simulator) share it.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) < _MESSAGE_HEADER_LEN.size:
        raise CodecError(f"message of {len(view)} bytes is shorter than its header length")
    (header_len,) = _MESSAGE_HEADER_LEN.unpack_from(view)
    end = _MESSAGE_HEADER_LEN.size + header_len
    if header_len > _MESSAGE_HEADER_BYTES_MAX or end > len(view):
        raise CodecError(f"message header length {header_len} is impossible")
    try:
        obj = msgpack.unpackb(
            view[_MESSAGE_HEADER_LEN.size : end],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=_MESSAGE_HEADER_BYTES_MAX,
            max_str_len=0,
            max_array_len=16,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types; all mean "malformed"
        raise CodecError(f"message header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) < 6:
        if isinstance(obj, list) and len(obj) == 2:
            return _decode_control(obj, len(view) - end)
        raise CodecError("message must be an array [type, origin, step, phase, round, kind, ...]")
    mtype = obj[0]
    if type(mtype) is not int or mtype not in _FIELDS:
        raise CodecError(f"unknown message type {mtype!r}")
    if len(obj) != 6 + _FIELDS[mtype]:
        raise CodecError(f"message type {mtype} takes {_FIELDS[mtype]} fields, got {len(obj) - 6}")
    origin, step, phase, rnd, kind = header = obj[1:6]
    if not (
        type(origin) is type(step) is type(phase) is type(rnd) is type(kind) is int
        and 0 <= min(header)
        and max(header) <= FIELD_VALUE_MAX
    ):
        for value, name in zip(header, _HEADER_NAMES, strict=True):
            if type(value) is not int or not 0 <= value <= FIELD_VALUE_MAX:
                raise CodecError(
                    f"{name} must be an integer in [0, {FIELD_VALUE_MAX}], got {value!r}"
                )
    # tuple.__new__ is what the named tuples' own __new__ calls, minus a Python frame
    iid = _new_tuple(InstanceId, (origin, _new_tuple(Tag, (step, phase, rnd, kind))))
    payload = view[end:]
    if mtype in (_SEND, _REPLY):
        if payload_bytes_max is not None and len(payload) > payload_bytes_max:
            raise CodecError(f"payload of {len(payload)} bytes > {payload_bytes_max}")
        if mtype == _SEND:
            return Send(iid, payload, _signature(obj[6]))
        return FetchReply(iid, payload)
    if len(payload):
        raise CodecError(f"message type {mtype} carries no payload, got {len(payload)} bytes")
    if mtype == _ECHO:
        return Echo(iid, _digest(obj[6]), _signature(obj[7]))
    if mtype == _READY:
        return Ready(iid, _digest(obj[6]))
    return Fetch(iid, _digest(obj[6]))


def _encode_control(message: Control) -> bytes:
    if isinstance(message, Catchup):
        head = [_CATCHUP, message.step]
    else:
        head = [_FINISHED, message.steps]
    header: bytes = msgpack.packb(head, use_bin_type=True)
    return _MESSAGE_HEADER_LEN.pack(len(header)) + header


def _decode_control(obj: list[Any], payload_bytes: int) -> Control:
    mtype, step = obj
    if type(mtype) is not int or mtype not in (_CATCHUP, _FINISHED):
        raise CodecError(f"unknown control message type {mtype!r}")
    if type(step) is not int or not 0 <= step <= FIELD_VALUE_MAX:
        raise CodecError(f"step must be an integer in [0, {FIELD_VALUE_MAX}], got {step!r}")
    if payload_bytes:
        raise CodecError(f"control message carries no payload, got {payload_bytes} bytes")
    return Catchup(step) if mtype == _CATCHUP else Finished(step)


class SharedDecoder:
    """:func:`decode` with a fixed payload limit, memoized over the byte strings it has seen.

    ``decode`` is a pure function of the bytes, so one memo may serve every core in a
    process. In the simulator a broadcast is one ``bytes`` object delivered to n-1 cores:
    with a shared decoder the header is parsed once instead of n-1 times (a ``bytes``
    object caches its own hash, so later lookups cost one dict probe). A real node gets a
    fresh object per message and has nothing to gain: it uses plain :func:`decode`.

    Only objects of at most :attr:`bytes_max` bytes are kept (ECHO, READY, FETCH and small
    payloads: the vast majority), at most :attr:`entries_max` of them, oldest evicted
    first; its keys stay under ``entries_max x bytes_max`` bytes. Malformed bytes are memoized
    too: every receiver still gets its own :class:`CodecError` (and charges the sender).
    """

    __slots__ = ("_memo", "bytes_max", "entries_max", "hits", "misses", "payload_bytes_max")

    def __init__(
        self, payload_bytes_max: int | None, entries_max: int = 65_536, bytes_max: int = 512
    ) -> None:
        if entries_max < 1 or bytes_max < 0:
            raise ValueError("entries_max must be >= 1 and bytes_max >= 0")
        self.payload_bytes_max = payload_bytes_max
        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self.hits = 0
        self.misses = 0
        self._memo: dict[bytes, WireMessage | str] = {}

    def __call__(self, data: bytes | memoryview) -> WireMessage:
        if type(data) is not bytes or len(data) > self.bytes_max:
            return decode(data, self.payload_bytes_max)
        memo = self._memo
        result = memo.get(data)
        if result is None:
            self.misses += 1
            try:
                result = decode(data, self.payload_bytes_max)
            except CodecError as exc:
                result = str(exc)
            if len(memo) >= self.entries_max:
                del memo[next(iter(memo))]  # the oldest entry (dicts keep insertion order)
            memo[data] = result
        else:
            self.hits += 1
        if isinstance(result, str):
            raise CodecError(result)
        return result


_HEADER_NAMES = ("origin", "step", "phase", "round", "kind")
_new_tuple = tuple.__new__
_TYPE_NAMES = {
    _SEND: "send",
    _ECHO: "echo",
    _READY: "ready",
    _FETCH: "fetch",
    _REPLY: "reply",
    _CATCHUP: "catchup",
    _FINISHED: "finished",
}


def peek(data: bytes | memoryview) -> tuple[str, tuple[int, ...]]:
    """(kind, tag) of encoded message bytes, cheaply, for metrics and schedulers:
    ("send", (origin, step, phase, round, kind)), ("catchup", ()) or ("finished", ()) for
    a control message (it belongs to no instance), or ("garbage", ()) if it does not decode."""
    try:
        message = decode(data)
    except CodecError:
        return "garbage", ()
    if isinstance(message, Catchup | Finished):
        return _TYPE_NAMES[_TYPE_CODES[type(message)]], ()
    iid = message.iid
    return _TYPE_NAMES[_TYPE_CODES[type(message)]], (
        iid.origin,
        iid.tag.step,
        iid.tag.phase,
        iid.tag.round,
        iid.tag.kind,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bin(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise CodecError(f"{name} must be binary, got {type(value).__name__}")
    return value


def _digest(value: object) -> bytes:
    digest = _bin(value, "digest")
    if len(digest) != DIGEST_BYTES:
        raise CodecError(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
    return digest


def _signature(value: object) -> bytes:
    signature = _bin(value, "signature")
    if len(signature) not in (0, SIGNATURE_BYTES):
        raise CodecError(f"signature must be 0 or {SIGNATURE_BYTES} bytes, got {len(signature)}")
    return signature


# --------------------------------------------------------------------------- arrays


def encode_array(array: np.ndarray) -> bytes:
    """dtype + shape + raw little-endian bytes; one copy (into the result)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    dtype_str = np.dtype(dtype).str
    if dtype_str not in ARRAY_DTYPES:
        raise ValueError(
            f"cannot encode dtype {array.dtype}; expected one of {sorted(ARRAY_DTYPES)}"
        )
    data = np.ascontiguousarray(array, dtype=dtype_str)
    header: bytes = msgpack.packb([dtype_str, list(data.shape)], use_bin_type=True)
    return b"".join((_HEADER_LEN.pack(len(header)), header, data.data.cast("B")))


def decode_array(data: bytes | memoryview) -> np.ndarray:
    """Rebuild an array from :func:`encode_array` bytes without copying; read-only view."""
    view = memoryview(data)
    if len(view) < _HEADER_LEN.size:
        raise CodecError("array shorter than its header length")
    (header_len,) = _HEADER_LEN.unpack_from(view)
    start = _HEADER_LEN.size + header_len
    if start > len(view):
        raise CodecError("array header runs past the end")
    try:
        header = msgpack.unpackb(
            view[_HEADER_LEN.size : start], raw=False, max_array_len=ARRAY_DIMS_MAX
        )
    except Exception as exc:
        raise CodecError(f"array header is not msgpack: {type(exc).__name__}") from None
    if not (isinstance(header, list) and len(header) == 2 and isinstance(header[0], str)):
        raise CodecError("array header must be [dtype, shape]")
    dtype_str, shape = header
    if dtype_str not in ARRAY_DTYPES:
        raise CodecError(f"array dtype {dtype_str!r} not allowed")
    if not isinstance(shape, list) or not all(
        _is_int(d) and 0 <= d <= FIELD_VALUE_MAX for d in shape
    ):
        raise CodecError("array shape must be a list of non-negative integers")
    dtype = np.dtype(dtype_str)
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != len(view) - start:
        raise CodecError(
            f"array of shape {shape} and dtype {dtype_str} needs {count * dtype.itemsize} bytes, "
            f"got {len(view) - start}"
        )
    return np.frombuffer(view, dtype=dtype, count=count, offset=start).reshape(shape)


# --------------------------------------------------------------------------- reports


def encode_report(origins: Sequence[int]) -> bytes:
    packed: bytes = msgpack.packb(sorted(origins), use_bin_type=True)
    return packed


def decode_report(data: bytes | memoryview, n: int) -> frozenset[int]:
    """A REPORT is a strictly increasing list of node ids in [0, n).

    Every node decodes every node's REPORT of every round (n^2 per round), so the checks
    run in C (``set(map(type, ...))``, ``sorted``, ``min``/``max``) rather than a Python
    loop per id, and reports of at most :data:`_REPORT_MEMO_BYTES_MAX` bytes are memoized
    (decoding is pure): the simulator hands one ``bytes`` object to every receiver."""
    if type(data) is bytes and len(data) <= _REPORT_MEMO_BYTES_MAX:
        return _decode_report_memo(data, n)
    return _decode_report(data, n)


#: reports this small (n up to ~300) are memoized by their bytes
_REPORT_MEMO_BYTES_MAX: Final = 1024


@functools.lru_cache(maxsize=8192)
def _decode_report_memo(data: bytes, n: int) -> frozenset[int]:
    return _decode_report(data, n)


def _decode_report(data: bytes | memoryview, n: int) -> frozenset[int]:
    try:
        obj = msgpack.unpackb(data, raw=False, max_array_len=n, max_bin_len=0, max_str_len=0)
    except Exception as exc:
        raise CodecError(f"report is not msgpack: {type(exc).__name__}") from None
    if type(obj) is not list or (obj and (set(map(type, obj)) != {int} or obj[0] < 0)):
        raise CodecError(f"report must be a list of node ids in [0, {n})")
    if (obj and obj[-1] >= n) or obj != sorted(obj):
        if obj and (min(obj) < 0 or max(obj) >= n):
            raise CodecError(f"report must be a list of node ids in [0, {n})")
        raise CodecError("report ids must be strictly increasing")
    ids = frozenset(obj)
    if len(ids) != len(obj):
        raise CodecError("report ids must be strictly increasing")
    return ids


# --------------------------------------------------------------------------- frames


def encode_frame(body: bytes) -> bytes:
    return _FRAME_LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental length-prefixed frame decoder (sans-IO, like h11's ``receive_data``).

    Feed it bytes as they arrive; take complete frames with :meth:`next_frame`. A length
    prefix above ``frame_bytes_max`` raises :class:`CodecError` before anything is
    buffered for that frame, so a peer cannot make us allocate what it announces.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._start = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more bytes are fed."""
        available = len(self._buffer) - self._start
        if available < _FRAME_LEN.size:
            return None
        (length,) = _FRAME_LEN.unpack_from(self._buffer, self._start)
        if length > self._frame_bytes_max:
            raise CodecError(
                f"frame of {length} bytes exceeds the limit of {self._frame_bytes_max}"
            )
        end = self._start + _FRAME_LEN.size + length
        if end > len(self._buffer):
            return None
        body = bytes(self._buffer[self._start + _FRAME_LEN.size : end])
        self._start = end
        return body
