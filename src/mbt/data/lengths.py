"""How long each stream of a media file says it is, and whether one that ended early was cut.

A stream that decodes to less than its header promises is either cut (a broken download or
copy, which ``data.on_short`` handles) or legitimately short: a sound track that ends before
its picture (a muted tail, a trimmed recording, a short effect) is common. The rule, one for
predict, evaluate, training and ``mbt prepare`` (:class:`mbt.data.video.VideoFile` and
:class:`mbt.data.audio.AudioTrack` ask :func:`cut_short`):

* **The stream's own length**, where the file gives one (:func:`stream_length`): a wav
  header's ``data`` chunk, the stream's ``duration`` (mp4, mov, avi, ogg, flac), the
  Matroska / WebM per-stream ``DURATION`` tag (written by FFmpeg's and mkvmerge's muxers), or
  a video's frame count. A stream that decodes to less than its own length, beyond muxer slack
  (:data:`TRUNCATED_AFTER_S`, :data:`TRUNCATED_AFTER_FRACTION`), is cut.
* **Only the container's length** (a Matroska file without per-stream tags): it covers every
  stream, so a stream ending before it proves nothing by itself. A cut download cuts every
  stream, so the file is cut only when every stream's data ends short of the container's
  length, or when the stream's own packets run on past where its decoding stopped (damaged
  data). Both come from one pass over the packet headers (:func:`packet_ends`: nothing is
  decoded), made only in this rare case and once per file and process.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import av

AV_TIME_BASE = 1_000_000  # FFmpeg's container-level time unit: microseconds
# A stream that decodes to less than its length by more than this (seconds, or this fraction
# of the length, whichever is larger) is cut short; less is rounding and muxer slack.
TRUNCATED_AFTER_S = 0.5
TRUNCATED_AFTER_FRACTION = 0.05
_CLOCK = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")  # Matroska tags: 00:00:01.430000000


@dataclass(frozen=True)
class HeaderLength:
    """A stream's length as the header gives it."""

    seconds: float
    own: bool  # the stream's own length; False: the container's, which covers every stream


def stream_length(
    container: av.container.InputContainer,
    stream: av.stream.Stream,
    *,
    declared: float | None = None,
    fps: float = 0.0,
) -> HeaderLength | None:
    """The length of ``stream`` its file gives: its own where the file says (``declared``, a
    wav header's count in seconds; the stream's ``duration``; a Matroska ``DURATION`` tag; the
    frame count at ``fps``), else the container's; None if the file gives none."""
    if declared is not None:
        return HeaderLength(declared, own=True)
    if stream.duration is not None and stream.time_base is not None:
        return HeaderLength(float(stream.duration * stream.time_base), own=True)
    tagged = duration_tag(stream.metadata)
    if tagged is not None:
        return HeaderLength(tagged, own=True)
    if stream.frames and fps > 0:
        return HeaderLength(stream.frames / fps, own=True)
    if container.duration is not None:
        return HeaderLength(container.duration / AV_TIME_BASE, own=False)
    return None


def duration_tag(metadata: dict[str, str]) -> float | None:
    """Seconds of a Matroska / WebM per-stream ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``)."""
    text = next((v for k, v in metadata.items() if k.upper() == "DURATION"), None)
    match = _CLOCK.match(text.strip()) if text else None
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def falls_short(promised: float, decoded: float) -> bool:
    """Whether ``decoded`` seconds fall short of ``promised`` ones beyond muxer slack."""
    return promised - decoded > max(TRUNCATED_AFTER_S, TRUNCATED_AFTER_FRACTION * promised)


def cut_short(path: str | Path, index: int, length: HeaderLength, decoded: float) -> bool:
    """Whether stream ``index`` of ``path``, whose header gives ``length`` and which decodes to
    ``decoded`` seconds (from its first frame or sample), was cut (the module's rule)."""
    if not falls_short(length.seconds, decoded):
        return False
    if length.own:
        return True
    ends = packet_ends(path)
    if falls_short(ends.get(index, 0.0), decoded):
        return True  # its packets run on: its decoding broke off in damaged data
    return all(falls_short(length.seconds, end) for end in ends.values())


def packet_ends(path: str | Path) -> dict[int, float]:
    """Per stream index, where its packets end (seconds from its first packet), from one pass
    over the packet headers of a fresh open of ``path`` (nothing decoded; a damaged tail ends
    the pass where it starts). {} if the file cannot be read at all. Learned once per file
    (path, size, modification time) and process."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return dict(_packet_ends(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=256)
def _packet_ends(path: str, size: int, mtime_ns: int) -> tuple[tuple[int, float], ...]:
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    try:
        with av.open(path) as container:
            try:
                for packet in container.demux():
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if stamp is None or packet.time_base is None:
                        continue  # a flush packet, or one without a time
                    i, tb = packet.stream.index, float(packet.time_base)
                    start, end = stamp * tb, (stamp + (packet.duration or 0)) * tb
                    first[i] = min(first.get(i, start), start)
                    last[i] = max(last.get(i, end), end)
            except av.FFmpegError:
                pass  # a damaged or cut tail: the packets before it are what the file holds
    except (av.FFmpegError, OSError):
        return ()
    return tuple((i, last[i] - first[i]) for i in sorted(last))
