"""How a vector travels: f32, f16, bf16 or block-scaled int8 (``[protocol] encoding``).

Wire layout (every encoding)::

    payload = u16 LE header length | msgpack [tag, [dims]] | data
    f32     tag = the dtype string ("<f4"; "<f8" for a float64 core), data = raw LE values:
            exactly :func:`protocol.codec.encode_array`'s bytes
    f16     tag = "f16",  data = d x IEEE half, LE (2 bytes a value)
    bf16    tag = "bf16", data = d x the top 16 bits of the float32, LE (2 bytes a value)
    int8    tag = "int8", data = ceil(d/256) x float32 LE scales, then d x int8
            (block b holds values 256b .. 256b+255; the last block may be short)

Encoding saturates rather than overflows: an honest finite value never becomes inf (f16
clips to +-65504, bf16 to +-3.3895e38, an int8 scale is kept below float32's max / 127).
Non-finite input stays non-finite, so a NaN a Byzantine filter sends is still refused.

Decoding is strict and pure: :meth:`VectorEncoding.decode` returns a finite, read-only
``(dim,)`` vector of the core's dtype or raises :class:`~protocol.codec.CodecError` (never
anything else) for a wrong tag for this node's encoding, a wrong length, a wrong byte or
block count, int8 bytes of -128, scales that are negative, subnormal, NaN/Inf or so large
that ``scale x 127`` overflows float32, and non-finite values. Every honest node decodes the
same bytes to the same vector, so the agreement drops a bad payload identically everywhere.

The origin encodes *before* it signs, and its round's own vector is the decoded one, so
every honest node (the origin included) aggregates identical values. Lossy encodings carry
their quantisation error forward (:class:`ErrorFeedback`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import msgpack
import numpy as np

from protocol.codec import ARRAY_DIMS_MAX, FIELD_VALUE_MAX, CodecError, decode_array, encode_array

#: the encodings a vector may travel as, by ``[protocol] encoding`` name
ENCODINGS: Final = ("f32", "f16", "bf16", "int8")
#: values per int8 block; each block has one float32 scale
INT8_BLOCK: Final = 256
#: the largest int8 magnitude used (-128 is refused: the range is symmetric)
INT8_MAX: Final = 127
#: bytes an array header may add to the data on the wire
ARRAY_HEADER_BYTES_MAX: Final = 64
#: the largest finite half
F16_MAX: Final = float(np.finfo(np.float16).max)  # 65504
#: the largest finite bfloat16 (0x7F7F): 3.3895e38
BF16_MAX: Final = float(np.uint32(0x7F7F0000).view(np.float32))
_F32_MAX: Final = float(np.finfo(np.float32).max)
#: the smallest normal float32: int8 scales are 0 or at least this, so that no decode ever
#: touches a subnormal (which a process with flush-to-zero would read as 0)
F32_TINY: Final = float(np.finfo(np.float32).tiny)
_TAGS: Final = {"f16": "f16", "bf16": "bf16", "int8": "int8"}
_HEADER_LEN = struct.Struct("<H")
_BF16_MAX_BITS: Final = np.uint16(0x7F7F)
_BF16_QUIET_NAN: Final = np.uint16(0x7FC0)


def int8_blocks(dim: int) -> int:
    """Scales an int8 vector of ``dim`` values carries: ceil(dim / 256)."""
    return -(-dim // INT8_BLOCK)


@dataclass(frozen=True, slots=True)
class VectorEncoding:
    """Encode and decode the ``(dim,)`` vectors of one core (one encoding, dim and dtype)."""

    name: str
    dim: int
    dtype: np.dtype[np.floating] = field(default_factory=lambda: np.dtype("<f4"))

    def __post_init__(self) -> None:
        if self.name not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.name!r}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")

    @property
    def lossy(self) -> bool:
        """Whether decode(encode(x)) may differ from x: all but f32, which error feedback
        therefore leaves alone."""
        return self.name != "f32"

    @property
    def payload_bytes_max(self) -> int:
        """The largest payload a valid ``(dim,)`` vector takes."""
        if self.name == "f32":
            return self.dim * self.dtype.itemsize + ARRAY_HEADER_BYTES_MAX
        if self.name == "int8":
            return self.dim + 4 * int8_blocks(self.dim) + ARRAY_HEADER_BYTES_MAX
        return 2 * self.dim + ARRAY_HEADER_BYTES_MAX

    @property
    def saturation(self) -> float | None:
        """The magnitude an encoded value is clipped to, if any (f16, bf16)."""
        return {"f16": F16_MAX, "bf16": BF16_MAX}.get(self.name)

    # ------------------------------------------------------------------ encoding

    def encode(self, vector: np.ndarray) -> bytes:
        """The payload for ``vector`` (any shape: a filter's wrong-length vector is sent as
        it is, and refused by its receivers). A local call: only float input."""
        if self.name == "f32":
            return encode_array(vector)
        values = _as_f32(np.ravel(vector))
        if self.name == "f16":
            data = encode_f16(values)
        elif self.name == "bf16":
            data = encode_bf16(values)
        else:
            scales, quantized = encode_int8(values)
            data = np.concatenate(
                (scales.astype("<f4", copy=False).view(np.uint8), quantized.view(np.uint8))
            )
        header: bytes = msgpack.packb([_TAGS[self.name], list(vector.shape)], use_bin_type=True)
        return b"".join((_HEADER_LEN.pack(len(header)), header, data.data.cast("B")))

    # ------------------------------------------------------------------ decoding

    def decode(self, payload: bytes | memoryview) -> np.ndarray:
        """The finite, read-only ``(dim,)`` vector of ``payload``, or :class:`CodecError`."""
        if self.name == "f32":
            return self._decode_f32(payload)
        view = memoryview(payload)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        tag, shape, start = _read_header(view)
        if tag != _TAGS[self.name]:
            raise CodecError(f"payload encoded as {tag!r}, this node expects {self.name}")
        if shape != [self.dim]:
            raise CodecError(f"shape {tuple(shape)} instead of ({self.dim},)")
        dim = self.dim
        data_bytes = len(view) - start
        if self.name == "int8":
            blocks = int8_blocks(dim)
            if data_bytes != 4 * blocks + dim:
                raise CodecError(
                    f"int8 vector of {dim} values needs {blocks} scales and {dim} values "
                    f"({4 * blocks + dim} bytes), got {data_bytes} bytes"
                )
            scales = np.frombuffer(view, "<f4", blocks, start)
            quantized = np.frombuffer(view, np.int8, dim, start + 4 * blocks)
            vector = decode_int8(scales, quantized)
        else:
            if data_bytes != 2 * dim:
                raise CodecError(
                    f"{self.name} vector of {dim} values needs {2 * dim} bytes, got {data_bytes}"
                )
            if self.name == "f16":
                vector = np.frombuffer(view, "<f2", dim, start).astype(np.float32)
            else:
                vector = decode_bf16(np.frombuffer(view, "<u2", dim, start))
        if not np.isfinite(vector).all():
            raise CodecError("vector has NaN or infinite values")
        if vector.dtype != self.dtype:
            vector = vector.astype(self.dtype)
        vector.flags.writeable = False
        return vector

    def _decode_f32(self, payload: bytes | memoryview) -> np.ndarray:
        """Today's array check, word for word (its reasons appear in fault logs)."""
        vector = decode_array(payload)
        if vector.dtype != self.dtype:
            raise CodecError(f"dtype {vector.dtype} instead of {self.dtype}")
        if vector.shape != (self.dim,):
            raise CodecError(f"shape {vector.shape} instead of ({self.dim},)")
        if not np.isfinite(vector).all():
            raise CodecError("vector has NaN or infinite values")
        return vector


@dataclass(slots=True)
class ErrorFeedback:
    """A node's quantisation residual (proposal sent - decoded), one per phase, carried
    into its next proposal of that phase: the round-0 vector of the next step's agreement
    of the phase (its next gradient, pseudo-gradient or model). So what the node proposes
    over many steps adds up to what it meant to propose (within one residual), instead of
    drifting by the rounding error of each step. Later rounds' vectors (aggregates) are
    not fed back (:meth:`AveragingAgreement._encode_own` says why).

    It lives in memory only (held by :class:`~protocol.core.NodeCore`): a restarted node
    starts with a zero residual. The residual of a saturated value (beyond f16's range, say)
    is dropped, not carried: it is not rounding error and would grow without bound.
    """

    residuals: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, phase: int, vector: np.ndarray) -> np.ndarray:
        """``vector`` plus the phase's residual (``vector`` itself if there is none or it
        does not fit); a sum that would overflow keeps the entry of ``vector``."""
        residual = self.residuals.get(phase)
        if residual is None or residual.shape != vector.shape or vector.dtype != residual.dtype:
            return vector
        with np.errstate(over="ignore", invalid="ignore"):
            total: np.ndarray = vector + residual
        finite = np.isfinite(total)
        if not finite.all():
            np.copyto(total, vector, where=~finite)
        return total

    def update(
        self, phase: int, sent: np.ndarray, decoded: np.ndarray, saturation: float | None
    ) -> None:
        """Remember what rounding took from ``sent`` (now received as ``decoded``)."""
        if sent.shape != decoded.shape or sent.dtype != decoded.dtype:
            self.residuals.pop(phase, None)
            return
        with np.errstate(over="ignore", invalid="ignore"):
            residual = sent - decoded
        if saturation is not None:
            residual[np.abs(decoded) >= saturation] = 0
        # beyond float32's range (a float64 core) every encoding saturates: not rounding
        residual[np.abs(sent) > _F32_MAX] = 0
        residual[~np.isfinite(residual)] = 0
        self.residuals[phase] = residual


# --------------------------------------------------------------------------- kernels


def encode_f16(values: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half (round to nearest even); finite values beyond the half range
    saturate to +-65504, NaN and +-Inf stay what they are."""
    with np.errstate(over="ignore"):
        half = values.astype("<f2")
    overflowed = np.isinf(half) & np.isfinite(values)
    if overflowed.any():
        half[overflowed] = np.copysign(np.float16(F16_MAX), values[overflowed])
    return half


def encode_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits: round to nearest even on the top 16 bits, as
    ``torch.Tensor.to(torch.bfloat16)``, except that finite values which would round to
    inf saturate to +-3.3895e38; NaN stays NaN (quiet, sign kept), +-Inf stays +-Inf."""
    bits = values.view(np.uint32)
    lsb = (bits >> 16) & 1
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    finite = np.isfinite(values)
    # a finite value whose rounding reached the exponent of Inf: saturate
    overflowed = finite & ((rounded & np.uint16(0x7F80)) == np.uint16(0x7F80))
    if overflowed.any():
        sign = (bits[overflowed] >> 16).astype(np.uint16) & np.uint16(0x8000)
        rounded[overflowed] = sign | _BF16_MAX_BITS
    if not finite.all():
        nan = np.isnan(values)  # rounding may carry a NaN's low bits into Inf or -0.0
        sign = (bits[nan] >> 16).astype(np.uint16) & np.uint16(0x8000)
        rounded[nan] = sign | _BF16_QUIET_NAN
    return rounded.astype("<u2", copy=False)  # little-endian on the wire, on every host


def decode_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (scales, int8 values): per block of 256, scale = max|x| / 127 (kept so
    that scale x 127 stays a finite float32), q = round(x / scale) clipped to [-127, 127];
    an all-zero block has scale 0 and zeros. A block holding NaN or Inf gets a NaN or Inf
    scale (refused by every receiver) and zeros."""
    dim = len(values)
    blocks = int8_blocks(dim)
    padded = np.zeros(blocks * INT8_BLOCK, dtype=np.float32)
    padded[:dim] = values
    rows = padded.reshape(blocks, INT8_BLOCK)
    with np.errstate(invalid="ignore"):
        amax = np.abs(rows).max(axis=1)
    scales = (amax / np.float32(INT8_MAX)).astype(np.float32)
    # float32 rounding may lift scale x 127 past float32's max: step down one ulp
    with np.errstate(invalid="ignore"):
        too_big = scales.astype(np.float64) * INT8_MAX > _F32_MAX
    if too_big.any():
        scales[too_big] = np.nextafter(scales[too_big], np.float32(0))
    scales[scales < np.float32(F32_TINY)] = 0  # subnormal scales: the block sends zeros
    usable = (scales > 0) & np.isfinite(scales)
    quotient = np.zeros_like(rows)
    np.divide(rows, scales[:, None], out=quotient, where=usable[:, None])
    np.rint(quotient, out=quotient)
    np.clip(quotient, -INT8_MAX, INT8_MAX, out=quotient)
    return scales, quotient.astype(np.int8).reshape(-1)[:dim]


def decode_int8(scales: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """(scales, int8 values) -> float32, after checking the scales (finite, >= 0, with
    scale x 127 a finite float32) and the values (no -128); CodecError otherwise. Valid
    input decodes to finite values: |q x scale| <= 127 x scale <= float32's max."""
    if not np.isfinite(scales).all():
        raise CodecError("int8 scale is NaN or infinite")
    if (scales < 0).any():
        raise CodecError("int8 scale is negative")
    if ((scales > 0) & (scales < np.float32(F32_TINY))).any():
        raise CodecError("int8 scale is subnormal (an encoder sends 0 instead)")
    if (scales.astype(np.float64) * INT8_MAX > _F32_MAX).any():
        raise CodecError(f"int8 scale x {INT8_MAX} overflows float32")
    if (quantized == -128).any():
        raise CodecError(f"int8 value -128 is outside [-{INT8_MAX}, {INT8_MAX}]")
    dim = len(quantized)
    full = dim // INT8_BLOCK
    vector = np.empty(dim, dtype=np.float32)
    cut = full * INT8_BLOCK
    np.multiply(
        quantized[:cut].reshape(full, INT8_BLOCK),
        scales[:full, None],
        out=vector[:cut].reshape(full, INT8_BLOCK),
    )
    if cut < dim:
        np.multiply(quantized[cut:], scales[full], out=vector[cut:])
    return vector


def _as_f32(values: np.ndarray) -> np.ndarray:
    """float32 contiguous values; float64 beyond float32's range saturates (NaN and Inf
    stay)."""
    if values.dtype == np.float32:
        return np.ascontiguousarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"cannot encode dtype {values.dtype}; expected a float vector")
    with np.errstate(over="ignore"):
        single = values.astype(np.float32)
    overflowed = np.isinf(single) & np.isfinite(values)
    if overflowed.any():
        single[overflowed] = np.copysign(np.float32(_F32_MAX), values[overflowed])
    return single


def _read_header(view: memoryview) -> tuple[str, list[int], int]:
    """(tag, shape, data offset) of a payload; CodecError if it has none."""
    if len(view) < _HEADER_LEN.size:
        raise CodecError("vector shorter than its header length")
    (header_len,) = _HEADER_LEN.unpack_from(view)
    start = _HEADER_LEN.size + header_len
    if start > len(view) or header_len > ARRAY_HEADER_BYTES_MAX:
        raise CodecError("vector header runs past the end")
    try:
        header = msgpack.unpackb(
            view[_HEADER_LEN.size : start],
            raw=False,
            max_array_len=ARRAY_DIMS_MAX,
            max_bin_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types; all mean "malformed"
        raise CodecError(f"vector header is not msgpack: {type(exc).__name__}") from None
    if not (isinstance(header, list) and len(header) == 2 and isinstance(header[0], str)):
        raise CodecError("vector header must be [encoding, shape]")
    tag, shape = header
    if not isinstance(shape, list) or not all(
        type(d) is int and 0 <= d <= FIELD_VALUE_MAX for d in shape
    ):
        raise CodecError("vector shape must be a list of non-negative integers")
    return tag, shape, start
