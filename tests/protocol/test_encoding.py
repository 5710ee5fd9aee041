"""Vector encodings on the wire (protocol/encoding.py): f32, f16, bf16 and block-scaled int8.

What is pinned: f32 is exactly the array codec's bytes; the lossy encodings' error bounds,
saturation and layout; bf16 is torch's conversion (bar saturation); every malformed payload
is a CodecError and, delivered to a core, one BAD_VECTOR fault against its origin; the
origin aggregates its decoded vector; error feedback keeps the decoded sum within one
residual of the true sum; agreements over int8 decide inside the box of the decoded inputs.
Randomized tests name their seed in every assertion.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgpack
import numpy as np
import pytest
import torch

from protocol.agreement import AgreementParams
from protocol.broadcast import BroadcastParams
from protocol.codec import CodecError, encode, encode_array
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import UnsignedScheme, digest
from protocol.encoding import (
    BF16_MAX,
    ENCODINGS,
    F16_MAX,
    INT8_BLOCK,
    ErrorFeedback,
    VectorEncoding,
    encode_bf16,
    encode_int8,
)
from protocol.messages import InstanceId, Kind, Message, Phase, Send, Tag
from protocol.settings import ProtocolSettings
from protocol.step import Broadcast, Decided, FaultKind, RoundStarted, Step
from tests.cluster import SESSION, Behaviour, Cluster, RandomDelays, honest_diameter

LOSSY = ("f16", "bf16", "int8")
SEEDS = (0, 1, 2)
F32 = np.dtype("<f4")


def codec(name: str, dim: int) -> VectorEncoding:
    return VectorEncoding(name, dim, F32)


def spread(rng: np.random.Generator, dim: int) -> np.ndarray:
    """Values over many magnitudes (and signs), as gradients and models have."""
    scale = 10.0 ** rng.uniform(-6, 3, dim)
    return (rng.standard_normal(dim) * scale).astype(np.float32)


def header(tag: object, shape: object) -> bytes:
    """A vector header: u16 LE length, then msgpack [tag, shape]."""
    return raw_header([tag, shape])


def raw_header(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("<H", len(packed)) + packed


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", SEEDS)
def test_f32_is_exactly_the_array_codec(seed: int) -> None:
    x = spread(np.random.default_rng(seed), 1000)
    payload = codec("f32", 1000).encode(x)
    assert payload == encode_array(x), f"seed {seed}"
    np.testing.assert_array_equal(codec("f32", 1000).decode(payload), x, err_msg=f"seed {seed}")


@pytest.mark.parametrize("seed", SEEDS)
def test_f16_and_bf16_round_to_half_an_ulp(seed: int) -> None:
    x = spread(np.random.default_rng(seed), 5000)
    for name, mantissa_bits, smallest_step in (("f16", 10, 2.0**-24), ("bf16", 7, 0.0)):
        back = codec(name, len(x)).decode(codec(name, len(x)).encode(x)).astype(np.float64)
        bound = np.maximum(np.abs(x) * 2.0 ** -(mantissa_bits + 1), smallest_step / 2)
        worst = float(np.max(np.abs(back - x) / bound))
        assert worst <= 1.0, f"{name}: error {worst:.3f} x the bound (seed {seed})"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dim", [1, 255, 256, 300, 1000])
def test_int8_is_within_half_a_step_of_each_block(seed: int, dim: int) -> None:
    x = spread(np.random.default_rng(seed), dim)
    back = codec("int8", dim).decode(codec("int8", dim).encode(x))
    for start in range(0, dim, INT8_BLOCK):
        block = x[start : start + INT8_BLOCK].astype(np.float64)
        step = np.max(np.abs(block)) / 127
        error = np.max(np.abs(back[start : start + INT8_BLOCK] - block))
        assert error <= step * 0.5 * (1 + 1e-5), f"block at {start}, dim {dim}, seed {seed}"


def test_int8_layout_scales_then_values_with_a_short_last_block_and_a_zero_block() -> None:
    dim = 2 * INT8_BLOCK + 44  # three blocks, the last one of 44 values
    x = np.zeros(dim, np.float32)
    x[:INT8_BLOCK] = np.linspace(-2.54, 1.27, INT8_BLOCK)  # block 0: max |x| = 2.54
    x[-44:] = 0.5  # block 2 (short); block 1 is all zeros
    payload = codec("int8", dim).encode(x)
    head = header("int8", [dim])
    assert payload[: len(head)] == head
    scales = np.frombuffer(payload, "<f4", 3, len(head))
    np.testing.assert_allclose(scales, [2.54 / 127, 0.0, 0.5 / 127], rtol=1e-6)
    values = np.frombuffer(payload, np.int8, dim, len(head) + 12)
    assert len(payload) == len(head) + 12 + dim
    assert values[0] == -127 and values[INT8_BLOCK - 1] == 64  # 1.27 / 0.02 = 63.5 -> 64
    assert not values[INT8_BLOCK : 2 * INT8_BLOCK].any()
    assert (values[-44:] == 127).all()
    back = codec("int8", dim).decode(payload)
    assert not back[INT8_BLOCK : 2 * INT8_BLOCK].any()
    np.testing.assert_array_equal(back[-44:], np.float32(0.5 / 127) * 127)


def test_int8_keeps_scale_times_127_finite_for_the_largest_floats() -> None:
    top = np.finfo(np.float32).max
    x = np.array([top, -top, 1.0], np.float32)
    scales, _values = encode_int8(x)
    assert float(scales[0]) * 127 <= top
    back = codec("int8", 3).decode(codec("int8", 3).encode(x))
    assert np.isfinite(back).all() and back[0] > 0.99 * top and back[1] < -0.99 * top


def test_int8_of_an_empty_block_and_tiny_values_decodes() -> None:
    x = np.full(10, 1e-45, np.float32)  # scale underflows to 0: all zeros, finite
    back = codec("int8", 10).decode(codec("int8", 10).encode(x))
    assert np.isfinite(back).all() and np.max(np.abs(back - x)) <= 1e-45


# --------------------------------------------------------------------------- bf16, saturation


def edge_values() -> np.ndarray:
    f32 = np.finfo(np.float32)
    base = np.array(
        [0.0, 1.0, 1.00390625, 1.0078125, 1.01171875, 3.0, 1e-3, 1e3, 65504.0, 1e30,
         float(f32.tiny), float(f32.smallest_subnormal), 1e-40, BF16_MAX, 3.3e38, 3.4e38,
         float(np.uint32(0x7F7F8000).view(np.float32)), float(f32.max)],
        dtype=np.float32,
    )  # fmt: skip
    # halfway points between bfloat16 neighbours (ties to even), and their neighbours
    halfway = (np.arange(0x3F80, 0x3F90, dtype=np.uint32) << 16) | 0x8000
    both = np.concatenate([base, halfway.view(np.float32)])
    with np.errstate(over="ignore"):
        up = np.nextafter(both, np.float32(np.inf))
    down = np.nextafter(both, np.float32(0))
    values = np.concatenate([both, up, down])
    return np.concatenate([values, -values])[np.isfinite(np.concatenate([values, values]))]


@pytest.mark.parametrize("seed", SEEDS)
def test_bf16_equals_torch_on_random_and_edge_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    random_floats = bits.view(np.float32)
    x = np.concatenate([random_floats[np.isfinite(random_floats)], spread(rng, 10_000)])
    x = np.concatenate([x, edge_values()])
    ours = encode_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    in_range = np.isfinite(torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    mismatched = np.flatnonzero((ours != theirs) & in_range)
    assert not len(mismatched), f"seed {seed}: {x[mismatched[:5]]} differ from torch"
    # where torch overflows to inf, we saturate at the largest finite bfloat16
    overflowed = ~in_range
    assert overflowed.any(), "the test should cover values that overflow"
    back = codec("bf16", len(x)).decode(codec("bf16", len(x)).encode(x))
    np.testing.assert_array_equal(back[overflowed], np.copysign(BF16_MAX, x[overflowed]))


def test_f16_and_bf16_saturate_instead_of_overflowing() -> None:
    top = float(np.finfo(np.float32).max)
    x = np.array([1e5, -1e5, 65519.0, 65520.0, 1e30, -top, 1.0], np.float32)
    f16 = codec("f16", 7).decode(codec("f16", 7).encode(x))
    np.testing.assert_array_equal(f16, [F16_MAX, -F16_MAX, F16_MAX, F16_MAX, F16_MAX, -F16_MAX, 1])
    bf16 = codec("bf16", 7).decode(codec("bf16", 7).encode(x))
    assert np.isfinite(bf16).all() and bf16[-2] == -BF16_MAX and bf16[-1] == 1.0


@pytest.mark.parametrize("name", LOSSY)
def test_non_finite_input_stays_non_finite_so_receivers_refuse_it(name: str) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([1.0, bad, 2.0], np.float32)
        with pytest.raises(CodecError):
            codec(name, 3).decode(codec(name, 3).encode(x))


def test_float64_cores_decode_to_float64() -> None:
    x = np.linspace(-1, 1, 300)
    for name in ENCODINGS:
        back = VectorEncoding(name, 300, np.dtype("<f8")).decode(
            VectorEncoding(name, 300, np.dtype("<f8")).encode(x)
        )
        assert back.dtype == np.float64 and np.max(np.abs(back - x)) < 0.01, name


# --------------------------------------------------------------------------- malformed payloads


DIM = 300  # two int8 blocks, the last one short


def malformed(name: str) -> dict[str, bytes]:
    """Every class of bad payload for a node expecting ``name`` vectors of DIM values."""
    good = np.linspace(-1, 1, DIM).astype(np.float32)
    right = codec(name, DIM).encode(good)
    cases = {
        "empty": b"",
        "no header": b"\x05",
        "header past the end": b"\x40\x00\x91",
        "header not msgpack": b"\x01\x00\xc1",
        "header not a list": raw_header("x"),
        "header of three": raw_header([name, [DIM], 0]),
        "tag not a string": header(7, [DIM]),
        "shape not a list": header(name, DIM),
        "negative dim": header(name, [-DIM]),
        "boolean dim": header(name, [True]),
        "one byte short": right[:-1],
        "one byte long": right + b"\x00",
        "wrong length": codec(name, DIM + 1).encode(np.zeros(DIM + 1, np.float32)),
        "two dimensions": codec(name, DIM).encode(good.reshape(3, DIM // 3)),
    }
    for other in ENCODINGS:  # every other encoding's valid payload: the wrong tag
        if other != name:
            cases[f"{other} payload"] = codec(other, DIM).encode(good)
    if name == "f32":
        cases["float64"] = encode_array(good.astype(np.float64))
        cases["nan"] = encode_array(np.full(DIM, np.nan, np.float32))
    if name in ("f16", "bf16"):
        inf_bits = 0x7C00 if name == "f16" else 0x7F80
        nan_bits = 0x7E00 if name == "f16" else 0x7FC0
        for label, bits in (("inf", inf_bits), ("nan", nan_bits)):
            data = np.zeros(DIM, np.uint16)
            data[7] = bits
            cases[label] = header(name, [DIM]) + data.astype("<u2").tobytes()
    if name == "int8":
        values = np.zeros(DIM, np.int8).tobytes()
        head = header(name, [DIM])

        def with_scales(*scales: float) -> bytes:
            return head + np.array(scales, "<f4").tobytes() + values

        cases["one scale too few"] = head + np.ones(1, "<f4").tobytes() + values
        cases["one scale too many"] = with_scales(1, 1, 1)
        cases["scale negative"] = with_scales(1, -1e-3)
        cases["scale nan"] = with_scales(np.nan, 1)
        cases["scale inf"] = with_scales(1, np.inf)
        cases["scale x 127 overflows"] = with_scales(3e38, 1)
        cases["scale subnormal"] = with_scales(1, 1e-40)
        cases["value -128"] = with_scales(1, 1)[:-1] + b"\x80"
    return cases


def test_int8_never_sends_or_decodes_a_subnormal_scale() -> None:
    """A process with flush-to-zero would read a subnormal as 0: honest encoders send a
    block that small as zeros (scale 0), and receivers refuse a subnormal scale."""
    c = codec("int8", 2 * INT8_BLOCK)
    x = np.zeros(2 * INT8_BLOCK, np.float32)
    x[:INT8_BLOCK] = 1e-37  # max / 127 would be subnormal
    x[INT8_BLOCK] = 1e-30
    decoded = c.decode(c.encode(x))
    assert not decoded[:INT8_BLOCK].any()
    tiny = np.finfo(np.float32).tiny
    assert ((decoded == 0) | (np.abs(decoded) >= tiny)).all()
    assert decoded[INT8_BLOCK] == pytest.approx(1e-30, rel=1e-2)


def test_bf16_payload_is_little_endian_whatever_the_host() -> None:
    bits = encode_bf16(np.array([1.0, -2.5], np.float32))
    assert bits.dtype == np.dtype("<u2")
    assert bits.tobytes() == bytes([0x80, 0x3F, 0x20, 0xC0])


def test_a_float64_value_beyond_float32_leaves_no_growing_residual() -> None:
    feedback = ErrorFeedback()
    c = VectorEncoding("int8", 4, np.dtype("<f8"))
    for _ in range(5):
        sent = feedback.add(0, np.array([1e39, 1.0, -2.0, 3.0]))
        assert sent[0] == 1e39  # nothing carried onto the saturated value
        feedback.update(0, sent, c.decode(c.encode(sent)), c.saturation)
        assert feedback.residuals[0][0] == 0  # saturation is not rounding error


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_malformed_payload_class_is_a_codec_error(name: str) -> None:
    for label, payload in malformed(name).items():
        with pytest.raises(CodecError):
            codec(name, DIM).decode(payload)
            pytest.fail(f"{name}: {label!r} decoded")


def test_the_largest_bounded_int8_scale_is_accepted() -> None:
    top = float(np.finfo(np.float32).max)
    scale = np.nextafter(np.float32(top / 127), np.float32(0))
    while float(scale) * 127 > top:
        scale = np.nextafter(scale, np.float32(0))
    values = np.full(DIM, 127, np.int8).tobytes()
    payload = header("int8", [DIM]) + np.array([scale, 1], "<f4").tobytes() + values
    assert np.isfinite(codec("int8", DIM).decode(payload)).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ENCODINGS)
def test_mutated_payloads_decode_or_raise_codec_error_only(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    right = bytearray(codec(name, DIM).encode(spread(rng, DIM)))
    for trial in range(300):
        data = bytearray(right)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if trial % 3 == 0:
            data = data[: int(rng.integers(len(data)))]
        try:
            vector = codec(name, DIM).decode(bytes(data))
        except CodecError:
            continue
        assert vector.shape == (DIM,) and np.isfinite(vector).all(), f"seed {seed} #{trial}"


# --------------------------------------------------------------------------- in a core


def core_config(
    encoding: str, *, n: int = 4, f: int = 1, me: int = 0, dim: int = DIM, **more: bool
) -> ProtocolConfig:
    return ProtocolConfig(
        n=n,
        f=f,
        me=me,
        session=SESSION,
        dim=dim,
        encoding=encoding,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=1, model_rounds=0),
        **more,
    )


def vector_iid(origin: int, step: int = 0) -> InstanceId:
    return InstanceId(origin, Tag(step, int(Phase.GRADIENT), 0, int(Kind.VECTOR)))


@pytest.mark.parametrize("name", ENCODINGS)
def test_each_malformed_payload_delivered_to_a_core_is_one_bad_vector_fault(name: str) -> None:
    for index, (label, payload) in enumerate(malformed(name).items()):
        origin = 1 + index % 3
        fresh = NodeCore(core_config(name), UnsignedScheme(), modelled_broadcast=True)
        fresh.propose(0, Phase.GRADIENT, np.zeros(DIM, np.float32))
        step = fresh.deliver(vector_iid(origin), payload)
        kinds = [(fault.kind, fault.accused) for fault in step.faults]
        assert kinds == [(FaultKind.BAD_VECTOR, origin)], f"{name}: {label!r} gave {kinds}"
        assert fresh.statistics().faults == {"bad_vector": {origin: 1}}, label


def test_an_f32_payload_to_an_int8_node_is_a_bad_vector() -> None:
    core = NodeCore(core_config("int8"), UnsignedScheme(), modelled_broadcast=True)
    core.propose(0, Phase.GRADIENT, np.zeros(DIM, np.float32))
    step = core.deliver(vector_iid(2), encode_array(np.ones(DIM, np.float32)))
    [fault] = step.faults
    assert (fault.kind, fault.accused) == (FaultKind.BAD_VECTOR, 2)
    assert "'<f4'" in fault.detail and "int8" in fault.detail
    assert not core.agreement(0, Phase.GRADIENT).held(0)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ENCODINGS)
def test_payload_limits_follow_the_encoding(name: str) -> None:
    per_value = {"f32": 4, "f16": 2, "bf16": 2, "int8": 1}[name]
    for dim in (1, 256, 257, 10_000):
        config = core_config(name, dim=dim)
        scales = 4 * -(-dim // INT8_BLOCK) if name == "int8" else 0
        assert config.payload_bytes_max == per_value * dim + scales + 64
        params = AgreementParams(
            BroadcastParams(4, 1, 0, SESSION), dim, F32, np.mean, encoding=name
        )
        assert params.payload_bytes_max(Kind.VECTOR) == config.payload_bytes_max
        payload = codec(name, dim).encode(np.full(dim, -3e38, np.float32))
        assert len(payload) <= config.payload_bytes_max, (name, dim)


def test_settings_carry_the_encoding_into_the_core_config() -> None:
    settings = ProtocolSettings(encoding="bf16", error_feedback=False)
    config = settings.config(n=4, f=1, me=0, session=SESSION, dim=10)
    assert (config.encoding, config.error_feedback) == ("bf16", False)
    assert ProtocolSettings().config(n=4, f=1, me=0, session=SESSION, dim=10).encoding == "f32"
    with pytest.raises(ValueError, match="encoding"):
        ProtocolSettings(encoding="f8")
    with pytest.raises(ValueError, match="encoding"):
        core_config("int4")


def own_broadcast(step: Step) -> tuple[bytes, np.ndarray]:
    [payload] = [o.payload for o in step.outputs if isinstance(o, Broadcast)]
    [started] = [o.vector for o in step.outputs if isinstance(o, RoundStarted)]
    return payload, started


@pytest.mark.parametrize("name", ENCODINGS)
def test_the_origin_signs_the_encoded_vector_and_keeps_the_decoded_one(name: str) -> None:
    x = spread(np.random.default_rng(5), DIM)
    core = NodeCore(core_config(name), UnsignedScheme(), modelled_broadcast=True)
    payload, own = own_broadcast(core.propose(0, Phase.GRADIENT, x))
    assert payload == codec(name, DIM).encode(x)
    np.testing.assert_array_equal(own, codec(name, DIM).decode(payload))
    # full fidelity: the SEND carries the same bytes and the origin holds the decoded vector
    full = NodeCore(core_config(name), UnsignedScheme())
    out = full.propose(0, Phase.GRADIENT, x)
    [send] = [m.message for m in out.messages if isinstance(m.message, Send)]
    assert bytes(send.payload) == payload
    held = full.agreement(0, Phase.GRADIENT).held(0)  # type: ignore[union-attr]
    np.testing.assert_array_equal(held.get(0, own), own)


@pytest.mark.parametrize("name", LOSSY)
def test_a_restored_own_payload_is_decoded_as_every_receiver_decodes_it(name: str) -> None:
    x = spread(np.random.default_rng(9), DIM)
    core = NodeCore(core_config(name), UnsignedScheme())
    out = core.propose(0, Phase.GRADIENT, x)
    durable = [m for m in out.durable if isinstance(m, Send)]
    restarted = NodeCore(core_config(name), UnsignedScheme())
    restarted.restore(durable)
    assert restarted.error_feedback is not None and not restarted.error_feedback.residuals
    again = restarted.propose(0, Phase.GRADIENT, np.zeros(DIM, np.float32))
    [started] = [o.vector for o in again.outputs if isinstance(o, RoundStarted)]
    np.testing.assert_array_equal(started, codec(name, DIM).decode(durable[0].payload))


# --------------------------------------------------------------------------- error feedback


def solo_decides(core: NodeCore, step: Step) -> bool:
    """Deliver a lone core's modelled broadcasts back to it until it decides."""
    pending = [o for o in step.outputs if isinstance(o, Broadcast)]
    while pending:
        broadcast = pending.pop(0)
        out = core.deliver(broadcast.iid, bytes(broadcast.payload))
        if any(isinstance(o, Decided) for o in out.outputs):
            return True
        pending += [o for o in out.outputs if isinstance(o, Broadcast)]
    return False


def drift(name: str, seed: int, feedback: bool, steps: int = 50) -> tuple[np.ndarray, ...]:
    """(sum of true - sum of decoded own vectors, the last residual, sum of |true|) at a
    lone core (n = 1) proposing ``steps`` vectors of one phase, each near one bias (so
    that rounding errors add up instead of cancelling)."""
    rng = np.random.default_rng(seed)
    config = core_config(name, n=1, f=0, error_feedback=feedback)
    core = NodeCore(config, UnsignedScheme(), modelled_broadcast=True)
    bias = spread(rng, DIM)
    true_sum, sent_sum, magnitude = np.zeros(DIM), np.zeros(DIM), np.zeros(DIM)
    for step in range(steps):
        x = (bias + 0.1 * bias * rng.standard_normal(DIM)).astype(np.float32)
        out = core.propose(step, Phase.GRADIENT, x)
        _payload, own = own_broadcast(out)
        assert solo_decides(core, out), f"seed {seed} step {step}"
        true_sum += x
        sent_sum += own
        magnitude += np.abs(x)
    residual = np.zeros(DIM)
    if core.error_feedback is not None:
        residual = core.error_feedback.residuals[int(Phase.GRADIENT)].astype(np.float64)
    return true_sum - sent_sum, residual, magnitude


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", LOSSY)
def test_error_feedback_keeps_the_sum_within_one_residual(name: str, seed: int) -> None:
    gap, residual, magnitude = drift(name, seed, feedback=True)
    # what is still owed is the last residual, up to float32 rounding of each x + residual
    rounding = 1e-5 * magnitude  # 50 additions, each within 2**-24 of a partial sum
    assert np.all(np.abs(gap - residual) <= rounding), f"{name} seed {seed}"
    without, nothing, _ = drift(name, seed, feedback=False)
    assert not nothing.any()
    assert np.max(np.abs(without)) > 5 * np.max(np.abs(gap)), f"{name} seed {seed}"


def test_error_feedback_is_one_residual_per_phase_carried_across_steps() -> None:
    feedback = ErrorFeedback()
    c = codec("int8", 4)
    x = np.array([0.3, 1.0, -0.7, 0.01], np.float32)
    sent = feedback.add(0, x)
    assert sent is x  # nothing carried yet
    decoded = c.decode(c.encode(sent))
    feedback.update(0, sent, decoded, c.saturation)
    np.testing.assert_array_equal(feedback.residuals[0], x - decoded)
    assert 1 not in feedback.residuals and feedback.add(1, x) is x  # the other phase
    np.testing.assert_array_equal(feedback.add(0, x), x + (x - decoded))
    assert feedback.add(0, x[:3]) is not None  # another shape: nothing added
    np.testing.assert_array_equal(feedback.add(0, x[:3]), x[:3])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", LOSSY)
def test_only_proposals_are_fed_back_not_the_later_rounds_aggregates(name: str, seed: int) -> None:
    """Rounds 1.. send aggregates (consensus iterates that must contract): they are encoded
    as they are, so after a 3-round agreement each node's residual is still the one its
    proposal (round 0) left, and its next proposal gets exactly that one."""
    c = codec(name, DIM)
    cluster = Cluster(
        4,
        1,
        dim=DIM,
        adversary=RandomDelays(seed),
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=3),
        encoding=name,
    )
    rng = np.random.default_rng(seed)
    key = (0, int(Phase.GRADIENT))
    first = {i: spread(rng, DIM) for i in range(4)}
    cluster.propose(0, Phase.GRADIENT, first)
    cluster.run()
    second = {i: spread(rng, DIM) for i in range(4)}
    for i in cluster.honest:
        node = cluster.nodes[i]
        assert len(node.rounds[key]) == 3, f"seed {seed} node {i}"
        feedback = node.core.error_feedback
        assert feedback is not None
        residual = first[i] - node.rounds[key][0]
        np.testing.assert_array_equal(
            feedback.residuals[int(Phase.GRADIENT)], residual, err_msg=f"seed {seed} node {i}"
        )
    cluster.propose(1, Phase.GRADIENT, second)
    for i in cluster.honest:
        started = cluster.nodes[i].rounds[(1, int(Phase.GRADIENT))][0]
        proposal = second[i] + (first[i] - cluster.nodes[i].rounds[key][0])
        np.testing.assert_array_equal(started, c.decode(c.encode(proposal)))


def test_a_saturated_values_excess_is_not_carried_and_a_sum_never_overflows() -> None:
    feedback = ErrorFeedback()
    c = codec("f16", 2)
    x = np.array([1e6, 1.0001], np.float32)
    decoded = c.decode(c.encode(x))
    feedback.update(0, x, decoded, c.saturation)
    assert feedback.residuals[0][0] == 0 and feedback.residuals[0][1] != 0
    top = np.finfo(np.float32).max
    feedback.residuals[1] = np.array([top, 1.0], np.float32)
    np.testing.assert_array_equal(feedback.add(1, np.array([top, 1.0], np.float32)), [top, 2.0])


def test_f32_and_switched_off_feedback_hold_no_residual() -> None:
    assert NodeCore(core_config("f32"), UnsignedScheme()).error_feedback is None
    off = core_config("int8", error_feedback=False)
    assert NodeCore(off, UnsignedScheme()).error_feedback is None
    assert NodeCore(core_config("int8"), UnsignedScheme()).error_feedback is not None


# --------------------------------------------------------------------------- agreements


class SendsF32(Behaviour):
    """Rewrites its own VECTOR SENDs into f32 (validly signed): honest int8 nodes refuse
    them (its own core still echoes its true payload: an equivocation too)."""

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if not (isinstance(message, Send) and message.iid.tag.kind == Kind.VECTOR):
            return (data,)
        assert self.node is not None
        payload = encode_array(np.ones(self.node.core.config.dim, np.float32))
        signature = self.node.scheme.sign(SESSION, message.iid, digest(payload))
        return (encode(Send(message.iid, payload, signature)),)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("dim", "fault"),
    # an f32 payload within the int8 payload limit is delivered and refused (BAD_VECTOR);
    # a larger one is refused by the codec on arrival (MALFORMED): either way, the origin
    [(16, FaultKind.BAD_VECTOR), (600, FaultKind.MALFORMED)],
)
def test_an_int8_agreement_decides_inside_the_box_of_the_decoded_honest_inputs(
    seed: int, dim: int, fault: FaultKind
) -> None:
    rounds = 3
    cluster = Cluster(
        4,
        1,
        dim=dim,
        adversary=RandomDelays(seed),
        behaviours={3: SendsF32()},
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
        encoding="int8",
    )
    rng = np.random.default_rng(seed)
    inputs = {i: spread(rng, dim) for i in range(4)}
    cluster.propose(0, Phase.GRADIENT, inputs)
    cluster.run()
    key = (0, int(Phase.GRADIENT))
    decisions = [cluster.nodes[i].decided.get(key) for i in cluster.honest]
    assert all(d is not None for d in decisions), f"seed {seed}: an honest node did not decide"
    kinds = {found.kind for found in cluster.honest_faults()}
    assert cluster.accused() == {3} and fault in kinds, f"seed {seed}: {kinds}"
    last = np.stack([cluster.nodes[i].rounds[key][-1] for i in cluster.honest])
    for i, decision in zip(cluster.honest, decisions, strict=True):
        assert decision is not None
        inside = (last.min(axis=0) <= decision) & (decision <= last.max(axis=0))
        assert inside.all(), f"seed {seed}: node {i} left the box of the decoded inputs"
    first = [cluster.nodes[i].rounds[key][0] for i in cluster.honest]
    for i, started in zip(cluster.honest, first, strict=True):  # round 0 is decoded input
        expected = codec("int8", dim).decode(codec("int8", dim).encode(inputs[i]))
        np.testing.assert_array_equal(started, expected, err_msg=f"seed {seed} node {i}")
    assert honest_diameter(d for d in decisions if d is not None) <= honest_diameter(list(last)), (
        f"seed {seed}"
    )


def test_a_held_back_vector_is_encoded_with_the_residual_when_it_is_resumed() -> None:
    """The rushing path (vector filter says "not yet", resume() asks again) encodes exactly
    as the direct one: filter first, then the phase's residual, then encoding."""
    asked: set[tuple[int, int]] = set()

    def rushing(step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray | None:
        if (step, round_) not in asked:
            asked.add((step, round_))
            return None
        return vector * 2

    c = codec("int8", DIM)
    core = NodeCore(
        core_config("int8", n=1, f=0), UnsignedScheme(), rushing, modelled_broadcast=True
    )
    rng = np.random.default_rng(11)
    expected_residual = np.zeros(DIM, np.float32)
    for step in range(3):
        x = spread(rng, DIM)
        assert not core.propose(step, Phase.GRADIENT, x).outputs and core.holding_back
        out = core.resume()
        payload, own = own_broadcast(out)
        sent = (x * 2 + expected_residual) if step else x * 2
        assert payload == c.encode(sent), f"step {step}"
        np.testing.assert_array_equal(own, c.decode(payload))
        expected_residual = sent - own
        assert solo_decides(core, out), f"step {step}"
