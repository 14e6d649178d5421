"""The engine's local channel: each message is a 4-byte big-endian length, then the protobuf.

The supervisor writes EngineCommand frames to the engine's stdin and reads EngineEvent frames
from its stdout. A reader thread turns stdin into a queue of commands; it only reads bytes and
parses protobuf, never touching pjlib (a thread unknown to pjlib that calls it aborts the process).
"""

from __future__ import annotations

import ctypes
import os
import queue
import struct
import sys
import threading
from typing import BinaryIO

from google.protobuf.message import DecodeError, Message

from callmeter.v1 import engine_pb2

HEADER = struct.Struct(">I")
# A TestSpec with its groups is a few kilobytes; anything near this is a broken stream.
MAX_FRAME = 16 * 1024 * 1024


def take_stdout() -> int:
    """Keeps stdout for the channel alone; returns its file descriptor.

    Everything else that writes to fd 1 (pjlib logs with printf, a stray print) goes to stderr
    from now on, line-buffered so that pjlib's lines are not held back.
    """
    sys.stdout.flush()
    channel = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    libc = ctypes.CDLL(None)
    libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdout"), None, 1, 0)  # 1: _IOLBF
    return channel


class ChannelError(Exception):
    """The byte stream is not a sequence of frames of the expected message."""


def encode(message: Message) -> bytes:
    body = message.SerializeToString()
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream, fed in arbitrary pieces, into frame bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ChannelError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
            if len(self._buffer) < HEADER.size + length:
                break
            frames.append(bytes(self._buffer[HEADER.size : HEADER.size + length]))
            del self._buffer[: HEADER.size + length]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame body from a blocking stream; None at a clean end of stream."""
    header = _read_exactly(stream, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ChannelError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    body = _read_exactly(stream, length)
    if body is None:
        raise ChannelError("stream ended inside a frame")
    return body


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            if data:
                raise ChannelError("stream ended inside a frame")
            return None
        data += chunk
    return data


class CommandReader:
    """Reads EngineCommand frames from a file descriptor on a daemon thread.

    ``commands`` yields EngineCommand messages, then None once the stream ends; a
    ChannelError instance is queued instead of None when the stream is malformed.
    """

    def __init__(self, fd: int) -> None:
        self.commands: queue.SimpleQueue[engine_pb2.EngineCommand | ChannelError | None] = queue.SimpleQueue()
        self._fd = fd
        self._thread = threading.Thread(target=self._run, name="engine-stdin", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        try:
            while data := os.read(self._fd, 65536):
                for body in decoder.feed(data):
                    command = engine_pb2.EngineCommand()
                    command.ParseFromString(body)
                    self.commands.put(command)
            if decoder.pending:
                raise ChannelError(f"stdin ended inside a frame ({decoder.pending} bytes held)")
            self.commands.put(None)
        except (ChannelError, DecodeError, OSError) as exc:
            self.commands.put(exc if isinstance(exc, ChannelError) else ChannelError(str(exc)))


class EventWriter:
    """Writes EngineEvent frames to a file descriptor; used from the engine's one loop thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, event: engine_pb2.EngineEvent) -> None:
        data = memoryview(encode(event))
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
