"""Why a video could not be decoded: one exception type per cause, each becomes the `error_type` of an error row."""

from __future__ import annotations

import time

from pipeline.errors import MolmoBatchError


class DecodeError(MolmoBatchError, RuntimeError):
    """A video that cannot be decoded (the message says why)."""


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than the configured limit."""


class EmptyVideo(DecodeError):
    """The object has no bytes."""


class VideoTooLarge(DecodeError):
    """The object is larger than `max_video_bytes`."""


class ObjectMissing(DecodeError):
    """The object was listed but is gone when read (deleted or replaced in between)."""


class SourceUnreadable(DecodeError):
    """The listing already found this video unreadable (a manifest row, a damaged shard)."""


class AccessDenied(DecodeError):
    """The credentials may not read the object."""


class NotAVideo(DecodeError):
    """The bytes are no video container at all (text, random data, another file type)."""


class DamagedContainer(DecodeError):
    """The file looks like a video container but cannot be read: truncated or damaged."""


class NoVideoStream(DecodeError):
    """The container holds no video stream (audio only, subtitles, ...)."""


class DecoderCrashed(DecodeError):
    """The decode process died (segfault, OOM kill) on this video more often than `crash_retries` allows."""


class UnsupportedCodec(DecodeError):
    """The video stream's codec has no decoder in this FFmpeg build."""


class Deadline:
    """The monotonic time by which one video must be done."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def check(self, where: str) -> None:
        if time.monotonic() > self.at:
            raise DecodeTimeout(f"decoding took longer than decode_timeout_s={self.timeout_s:g} (stopped while {where})")
