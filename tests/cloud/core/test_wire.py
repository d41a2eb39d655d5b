"""The engine socket's frames: split anywhere, bounded, JSON objects only."""

from __future__ import annotations

import pytest

from userlayer.cloud.core.wire import HEADER, MAX_FRAME, FrameReader, ProtocolError, encode


def test_frames_survive_any_split_and_come_out_in_order() -> None:
    msgs = [{"id": i, "op": "recommend", "body": {"x": "й" * i}} for i in range(20)]
    data = b"".join(encode(m) for m in msgs)
    for step in (1, 3, 7, 64, len(data)):
        reader, out = FrameReader(), []
        for i in range(0, len(data), step):
            out += reader.feed(data[i : i + step])
        assert out == msgs and not reader.buf


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"[1, 2]", "JSON object"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),  # RecursionError inside json: must not escape
    ],
)
def test_a_frame_that_is_not_a_json_object_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameReader().feed(HEADER.pack(len(payload)) + payload)


def test_a_frame_longer_than_the_bound_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"x": "a" * MAX_FRAME})
