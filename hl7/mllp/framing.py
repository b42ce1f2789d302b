"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR>.

`MllpFrameReader` is a pure stream parser, separate from any socket, so every framing case is
tested by feeding bytes: frames split across reads (even byte by byte), several frames in one read,
bytes outside frames, a start block inside a frame, a frame over the size limit.

Rules, and why:
- Bytes outside a frame are skipped and counted. Peers often send a stray CR/LF after <FS><CR>; a
  noisy line must not stop the stream.
- A start block inside a frame means the sender abandoned that message and started again (some
  engines do this after their own timeout). The partial message is discarded unanswered: answering
  it would pair our ACK with the wrong message on the peer's side.
- A frame that grows past `max_message_size` is dropped as it arrives, so a bad peer cannot exhaust
  memory; when its end block arrives the reader reports `OversizedMessage` (with the first segment,
  which holds MSH, so the server can still answer AR echoing MSH-10).
- Only <FS><CR> ends a frame, as the standard says; <FS> alone is not a terminator.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
FRAME_END = END_BLOCK + CARRIAGE_RETURN

#: 1 MiB: an ORM is a few kilobytes; an ORU with an embedded PDF report can be some hundred KiB.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: How much of an oversized frame is kept to read its header (only up to the first CR).
_HEAD_LIMIT = 4096

_START = START_BLOCK[0]
_END = END_BLOCK[0]
_CR = CARRIAGE_RETURN[0]


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message (segments ending in CR) in an MLLP frame."""
    if START_BLOCK in message or END_BLOCK in message:
        # Would split into two frames at the receiver: escape such bytes in HL7 (\X0B\) instead.
        raise ValueError("an HL7 message cannot contain the MLLP start or end block bytes")
    return START_BLOCK + message + FRAME_END


@dataclass(frozen=True)
class OversizedMessage:
    """A complete frame whose content exceeded the limit and was discarded.

    `head` is the message's first segment (MSH) when it fit in the first 4 KiB, else empty.
    """

    size: int
    head: bytes


class MllpFrameReader:
    """Incremental MLLP deframer: `feed()` bytes as they arrive, get complete messages back."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        #: Bytes thrown away: outside frames, and partial frames abandoned by a new start block.
        self.skipped_bytes = 0
        #: Frames abandoned because a start block arrived before their end block.
        self.restarted_frames = 0
        #: Frames discarded for exceeding the size limit (reported as OversizedMessage).
        self.oversized_frames = 0
        self._in_frame = False
        self._buffer = bytearray()
        # Oversized frame being skipped: its size so far, its head, whether the last byte was <FS>.
        self._discarding = False
        self._discarded_size = 0
        self._head = b""
        self._pending_end_block = False

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (e.g. when the peer disconnects)."""
        return self._in_frame

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the frame in progress (bounded by max_message_size plus one read)."""
        return len(self._buffer)

    def discard_partial(self) -> int:
        """Forget an unfinished frame (connection lost); returns how many bytes were dropped."""
        dropped = len(self._buffer) + self._discarded_size if self._in_frame else 0
        self.skipped_bytes += dropped
        self._leave_frame()
        return dropped

    def feed(self, data: bytes) -> list[bytes | OversizedMessage]:
        """Consume `data`; return the messages (content between the blocks) completed by it."""
        completed: list[bytes | OversizedMessage] = []
        position = 0
        size = len(data)
        while position < size:
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                if start < 0:
                    self.skipped_bytes += size - position
                    break
                self.skipped_bytes += start - position
                self._enter_frame()
                position = start + 1
            elif self._discarding:
                position = self._skip_oversized(data, position, completed)
            else:
                position = self._collect(data, position, completed)
        return completed

    def _collect(
        self, data: bytes, position: int, completed: list[bytes | OversizedMessage]
    ) -> int:
        if self._pending_end_block:
            # The previous read ended with <FS>: only a CR right now completes the frame.
            self._pending_end_block = False
            if data[position] == _CR:
                self._finish(bytes(self._buffer), completed)
                return position + 1
            self._buffer.append(_END)
        end = data.find(FRAME_END, position)
        start = data.find(START_BLOCK, position)
        if start >= 0 and (end < 0 or start < end):
            self.skipped_bytes += len(self._buffer) + (start - position)
            self.restarted_frames += 1
            self._enter_frame()
            return start + 1
        if end >= 0:
            self._buffer += data[position:end]
            self._finish(bytes(self._buffer), completed)
            return end + 2
        stop = len(data)
        if data[-1] == _END:
            # Maybe the first half of <FS><CR>: hold it back until the next byte is known.
            self._pending_end_block = True
            stop -= 1
        self._buffer += data[position:stop]
        if len(self._buffer) > self.max_message_size:
            self._start_discarding()
        return len(data)

    def _skip_oversized(
        self, data: bytes, position: int, completed: list[bytes | OversizedMessage]
    ) -> int:
        if self._pending_end_block:
            self._pending_end_block = False
            if data[position] == _CR:
                self._report_oversized(completed)
                return position + 1
            self._discarded_size += 1
        end = data.find(FRAME_END, position)
        start = data.find(START_BLOCK, position)
        if start >= 0 and (end < 0 or start < end):
            # The peer gave up on the oversized message: nobody waits for its answer any more.
            self.skipped_bytes += self._discarded_size + (start - position)
            self.restarted_frames += 1
            self._enter_frame()
            return start + 1
        if end >= 0:
            self._discarded_size += end - position
            self._report_oversized(completed)
            return end + 2
        self._discarded_size += len(data) - position
        if data[-1] == _END:
            self._pending_end_block = True
            self._discarded_size -= 1
        return len(data)

    def _start_discarding(self) -> None:
        first_segment_end = self._buffer.find(CARRIAGE_RETURN, 0, _HEAD_LIMIT)
        self._head = bytes(self._buffer[:first_segment_end]) if first_segment_end >= 0 else b""
        self._discarded_size = len(self._buffer)
        self._buffer = bytearray()
        self._discarding = True

    def _finish(self, message: bytes, completed: list[bytes | OversizedMessage]) -> None:
        if len(message) > self.max_message_size:
            self._start_discarding()
            self._report_oversized(completed)
            return
        completed.append(message)
        self._leave_frame()

    def _report_oversized(self, completed: list[bytes | OversizedMessage]) -> None:
        self.oversized_frames += 1
        self.skipped_bytes += self._discarded_size
        completed.append(OversizedMessage(size=self._discarded_size, head=self._head))
        self._leave_frame()

    def _enter_frame(self) -> None:
        self._leave_frame()
        self._in_frame = True

    def _leave_frame(self) -> None:
        self._in_frame = False
        self._buffer = bytearray()
        self._discarding = False
        self._discarded_size = 0
        self._head = b""
        self._pending_end_block = False
