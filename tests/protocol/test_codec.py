"""The codec is the only place bytes become objects: round-trips exactly, and for any
bytes at all returns a message or raises CodecError, never anything else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import (
    CodecError,
    FrameDecoder,
    SharedDecoder,
    decode,
    decode_array,
    decode_report,
    encode,
    encode_array,
    encode_frame,
    encode_report,
    peek,
)
from protocol.messages import Echo, Fetch, FetchReply, InstanceId, Message, Ready, Send, Tag

small = st.integers(min_value=0, max_value=2**31 - 1)
iids = st.builds(InstanceId, small, st.builds(Tag, small, small, small, small))
digests = st.binary(min_size=32, max_size=32)
signatures = st.one_of(st.just(b""), st.binary(min_size=64, max_size=64))
payloads = st.binary(max_size=2048)
messages = st.one_of(
    st.builds(Send, iids, payloads, signatures),
    st.builds(Echo, iids, digests, signatures),
    st.builds(Ready, iids, digests),
    st.builds(Fetch, iids, digests),
    st.builds(FetchReply, iids, payloads),
)


def _same(a: Message, b: Message) -> bool:
    return type(a) is type(b) and a == b  # memoryview payloads compare by content


@settings(max_examples=400, deadline=None)
@given(messages)
def test_round_trip_is_exact(message: Message) -> None:
    data = encode(message)
    assert _same(decode(data), message)
    assert encode(decode(data)) == data
    assert peek(data)[0] in {"send", "echo", "ready", "fetch", "reply"}


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass
    assert peek(data)[0] in {"garbage", "send", "echo", "ready", "fetch", "reply"}


@settings(max_examples=2000, deadline=None)
@given(messages, st.data())
def test_mutated_frames_only_raise_codec_error(message: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if action == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and raw:
            del raw[at]
        else:
            del raw[at:]
    try:
        decoded = decode(bytes(raw))
    except CodecError:
        return
    assert encode(decoded)  # whatever decodes is a well-formed message again


def test_payload_limit_is_enforced() -> None:
    data = encode(Send(InstanceId(0, Tag(0, 0, 0, 0)), b"x" * 100, b""))
    assert len(decode(data, payload_bytes_max=100).payload) == 100
    with pytest.raises(CodecError, match="payload of 101 bytes"):
        decode(encode(Send(InstanceId(0, Tag(0, 0, 0, 0)), b"x" * 101, b"")), 100)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01",
        b"\xff\xff" + b"\x00" * 10,  # header length past the end
        b"\x02\x00\x90\x90",  # header is an empty array
    ],
)
def test_short_and_impossible_headers(bad: bytes) -> None:
    with pytest.raises(CodecError):
        decode(bad)


def test_bool_and_negative_fields_are_refused() -> None:
    import msgpack

    for head in ([3, True, 0, 0, 0, 0, b"d" * 32], [3, -1, 0, 0, 0, 0, b"d" * 32]):
        header = msgpack.packb(head)
        with pytest.raises(CodecError):
            decode(len(header).to_bytes(2, "little") + header)


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_arrays_round_trip_without_copy(dtype: str) -> None:
    array = np.random.default_rng(1).standard_normal((3, 5)).astype(dtype)
    data = encode_array(array)
    back = decode_array(data)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 5)
    np.testing.assert_array_equal(back, array)
    assert not back.flags.owndata  # a view over the received buffer
    assert np.shares_memory(back, np.frombuffer(data, dtype=np.uint8))


def test_big_endian_arrays_travel_little_endian() -> None:
    array = np.arange(4, dtype=">f4")
    back = decode_array(encode_array(array))
    assert back.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05\x00abc",
        encode_array(np.zeros(3, "<f4"))[:-1],  # one byte short
        encode_array(np.zeros(3, "<f4")) + b"\x00",  # one byte long
    ],
)
def test_bad_arrays(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_array(data)


def test_array_dtype_allow_list() -> None:
    with pytest.raises(ValueError, match="cannot encode dtype"):
        encode_array(np.zeros(3, dtype=np.int64))
    header = b"\x92\xa3<i8\x91\x01"  # msgpack ["<i8", [1]]
    with pytest.raises(CodecError, match="not allowed"):
        decode_array(len(header).to_bytes(2, "little") + header + b"\x00" * 8)


def test_reports() -> None:
    assert decode_report(encode_report([3, 1, 2]), 4) == frozenset({1, 2, 3})
    for bad in (encode_report([1, 1]), encode_report([4]), b"\xc1", b"\x91\xc3"):
        with pytest.raises(CodecError):
            decode_report(bad, 4)


def test_frame_decoder_reassembles_and_bounds() -> None:
    frames = [b"a" * 10, b"", b"b" * 1000]
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder(frame_bytes_max=1000)
    out = []
    for i in range(0, len(stream), 7):  # dribble it in
        decoder.feed(stream[i : i + 7])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == frames
    assert decoder.buffered_bytes == 0
    decoder.feed((1001).to_bytes(4, "little"))
    with pytest.raises(CodecError, match="exceeds the limit"):
        decoder.next_frame()


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(messages.map(encode), st.binary(max_size=600)))
def test_shared_decoder_answers_as_decode_does_every_time(data: bytes) -> None:
    shared = SharedDecoder(payload_bytes_max=1024)
    for _ in range(3):  # a miss, then hits: the same answer each time
        try:
            expected = decode(data, 1024)
        except CodecError as exc:
            with pytest.raises(CodecError) as caught:
                shared(data)
            assert str(caught.value) == str(exc)
            continue
        assert _same(shared(data), expected)


def test_shared_decoder_memoizes_small_messages_only_and_stays_bounded() -> None:
    shared = SharedDecoder(payload_bytes_max=1 << 20, entries_max=4, bytes_max=200)
    echo = encode(Echo(InstanceId(1, Tag(0, 0, 0, 0)), b"\1" * 32, b""))
    assert shared(echo) is shared(echo)  # one decode, shared by every later receiver
    assert (shared.misses, shared.hits) == (1, 1)
    big = encode(Send(InstanceId(1, Tag(0, 0, 0, 0)), b"x" * 500, b""))
    assert shared(big) is not shared(big)  # over bytes_max: decoded each time
    for k in range(10):
        shared(encode(Ready(InstanceId(k, Tag(0, 0, 0, 0)), b"\2" * 32)))
    assert len(shared._memo) == 4  # the oldest were evicted
    shared(echo)
    assert shared.misses == 12  # echo was evicted too, so decoded again
    with pytest.raises(CodecError, match="payload"):
        SharedDecoder(payload_bytes_max=10)(
            encode(Send(InstanceId(1, Tag(0, 0, 0, 0)), b"y" * 50, b""))
        )
