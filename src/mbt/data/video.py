"""Video decoding: probe a file, decode only the frames that given times need, as shown.

Times are seconds from the start of the video stream (its first frame is at 0), so they do not
depend on the container's time base or frame rate; :func:`read_frames` picks, for each wanted
time, the decoded frame whose timestamp is nearest. That works for variable frame rate files
and for every container FFmpeg reads (avi, mkv, webm, mov, mp4). Which times to ask for is
:mod:`mbt.data.sampling`'s business::

    info = probe_video(path)
    span = window_span(info.duration, 8, mode="window", fps=info.fps, train=True, generator=g)
    times = sample_times(info.duration, 8, mode="window", fps=info.fps, span=span)
    frames = read_frames(path, times, short_side=256)  # (8, <=256, W, 3) uint8
    # span = (start, end) seconds of the video window: centre the audio crop on it.

Frames come out as a player shows them: the display orientation of the file (a phone's
portrait clip is stored as landscape pixels plus a display matrix, :mod:`mbt.data.orientation`)
is applied, and ``VideoInfo.width`` / ``height`` are the shown ones.

Decoding is keyframe-aware (:class:`VideoFile`): a wanted frame far from the last decoded one is
reached by a seek to the keyframe before it, a near one by decoding on, so a few frames of a
10-minute file cost what they cost in a 10-second one (up to the keyframe spacing, which the
file's encoder chose). A file whose header promises more than decodes (a cut download, by the
rule of :mod:`mbt.data.lengths`) raises :class:`TruncatedMediaError` when frames past its
decodable end are asked for.

Shape vocabulary: T frames, H x W pixels, 3 RGB channels (uint8, channels last, as decoded).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gc
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from mbt.data.lengths import HeaderLength, cut_short, stream_length
from mbt.data.orientation import UPRIGHT, Orientation, frame_orientation
from mbt.errors import MediaError


class TruncatedMediaError(MediaError):
    """A file's header promises more than decodes (a cut download or copy), and the part that
    does not decode was asked for. ``data.on_short`` says what happens then."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns from a file's header and its first decoded frame."""

    path: str
    duration: float  # seconds: the video stream's own length, else the container's
    fps: float  # average frame rate
    num_frames: int  # from the container, or duration * fps when the container doesn't say
    width: int  # as shown, after the display orientation (a portrait phone clip: W < H)
    height: int
    has_audio: bool
    orientation: Orientation = UPRIGHT  # how the stored pixels are turned to be shown

    def shown(self, orientation: Orientation) -> VideoInfo:
        """This header's info for pixels stored ``width`` x ``height`` and shown turned by
        ``orientation``."""
        width, height = orientation.size(self.width, self.height)
        return dataclasses.replace(self, width=width, height=height, orientation=orientation)


def open_media(
    path: str | Path, options: dict[str, str] | None = None, format: str | None = None
) -> av.container.InputContainer:
    """Open ``path`` for reading; any failure becomes a one-line :class:`MediaError`.

    ``options`` are FFmpeg format options (e.g. ``{"probesize": "32"}``), ``format`` forces a
    demuxer (e.g. ``"wav"``) instead of probing for one.
    """
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(p), "r", format=format, options=options or {})
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable media file ({_reason(e)})") from e


def _reason(e: BaseException) -> str:
    """The short part of an error, for one-line messages."""
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Read the header of a video file, and its first frame for the display orientation
    (FFmpeg gives PyAV the display matrix on decoded frames only).

    Args:
        path: any file FFmpeg can open.

    Returns:
        A :class:`VideoInfo`. ``duration`` is the video stream's own length (its ``duration``,
        Matroska ``DURATION`` tag or frame count), else the container's; ``num_frames`` is the
        container's count, else ``round(duration * fps)``; width and height as shown.

    Raises:
        MediaError: the file is missing, empty, corrupt, has no video stream, or its first
            frame does not decode.
    """
    with VideoFile(path) as video:
        return video.info


def header_has_audio(path: str | Path) -> bool:
    """Whether a video file has an audio track, from its header alone; raises
    :class:`MediaError` for a header :func:`probe_video` refuses. No frame is decoded: a data
    set scan probes thousands of files, and decoding one frame each would double its cost."""
    container = open_media(path)
    try:
        return _video_info(container, path)[0].has_audio
    finally:
        container.close()


def _video_info(
    container: av.container.InputContainer, path: str | Path
) -> tuple[VideoInfo, HeaderLength]:
    """The header's :class:`VideoInfo` (the stored size, upright) and length of an open
    container."""
    stream = _video_stream(container, path)
    fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
    length = stream_length(container, stream, fps=fps)
    if length is None:
        raise MediaError(f"{path}: the container gives no duration")
    num_frames = stream.frames or max(1, round(length.seconds * fps))
    cc = stream.codec_context
    if not cc.width or not cc.height:
        raise MediaError(f"{path}: video stream has no frame size (corrupt header?)")
    info = VideoInfo(
        path=str(path),
        duration=length.seconds,
        fps=fps if fps > 0 else num_frames / max(length.seconds, 1e-9),
        num_frames=int(num_frames),
        width=int(cc.width),
        height=int(cc.height),
        has_audio=len(container.streams.audio) > 0,
    )
    return info, length


# ---------------------------------------------------------------------------------------------
# Decoding

LANDING_SLACK_S = 1e-3  # a seek whose first frame comes later than this after the target missed
SEEK_TRIES = 3  # seeks, each further back, before decoding from the start instead


def read_frames(
    path: str | Path,
    times: Sequence[float],
    *,
    short_side: int | None = None,
    pad_truncated: bool = False,
) -> torch.Tensor:
    """Decode the frames nearest to ``times`` (one open, one keyframe-aware pass).

    For each wanted time the frame whose timestamp is nearest is kept (ties go to the earlier
    frame), so variable frame rate is handled; times past the last frame give the last frame.
    Only the chosen frames are converted to RGB. See :class:`VideoFile` for what is decoded.

    Args:
        path: a video file.
        times: T timestamps in seconds from the first frame, in any order, repeats allowed.
        short_side: if given and the frame's shorter side is longer, shrink it to this many
            pixels (FFmpeg's area-averaging scaler, anti-aliased), keeping the aspect ratio.
            Smaller frames are never enlarged: the crop transforms resize anyway.
        pad_truncated: for a file that decodes to less than its header says, give times past
            the decodable end its last frame instead of raising.

    Returns:
        uint8 (T, H, W, 3) RGB frames, in the order of ``times``.

    Raises:
        TruncatedMediaError: times past the decodable end of a truncated file (unless
            ``pad_truncated``).
        MediaError: the file cannot be opened or decoded, or has no video stream.
    """
    with VideoFile(path) as video:
        return video.frames(times, short_side=short_side, pad_truncated=pad_truncated)


@dataclass
class DecodeCount:
    """The work a reader did (tests and benchmarks read it)."""

    frames: int = 0  # frames out of the video decoder
    seeks: int = 0
    samples: int = 0  # audio samples out of the audio decoder (input rate)

    def __add__(self, other: DecodeCount) -> DecodeCount:
        return DecodeCount(
            self.frames + other.frames, self.seeks + other.seeks, self.samples + other.samples
        )


class _SeekMissed(Exception):
    """A seek did not land at or before its frame (a broken index, a cut file): start over."""


class VideoFile:
    """An open video file: its header, and the frames nearest to any times.

    Decodes only what the wanted frames need. Wanted times are visited in time order; the
    decoder seeks when the keyframe a seek would land on lies after the frame decoded last
    (decoding from there costs less than decoding on), and decodes on otherwise. That is never
    more work than decoding sequentially or seeking to every frame, whichever the keyframe
    spacing favours, and needs no threshold. Keyframe times come from the container's index
    (mp4 ``stss``, avi ``idx1``, mkv cues: read at open, nothing decoded), else from one pass
    over the packet headers. A seek whose first frame comes after the wanted time (a demuxer
    that picks keyframes by decode time, a broken index) is retried further back, and after
    :data:`SEEK_TRIES` misses the file is decoded from the start without seeking: the frames
    are always the ones a sequential decode picks.

    The first frame is decoded at open: its display matrix (:mod:`mbt.data.orientation`) says
    how every frame is turned to be shown, as ``ffmpeg`` turns them by the first frame's.
    Reading from the start goes on from it; a reader that seeks first decodes one frame more.

    Args:
        path: the file.
        container: an open container of ``path`` to share with its audio reader (the caller
            closes it; this reader seeks it to the start to read the first frame); None opens
            one.
        threads: FFmpeg decoder threads: ``"NONE"``, or ``"AUTO"`` (frame and slice threads:
            less wall time in a lone process; never in one that forks while this object may
            still be garbage-collected, see :class:`mbt.data.clip.MediaReader`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        container: av.container.InputContainer | None = None,
        threads: Literal["AUTO", "NONE"] = "NONE",
    ) -> None:
        self.path = path
        self.threads = threads
        self._own = container is None
        self.container = open_media(path) if container is None else container
        self._keys: list[float] | None = None  # keyframe times, read when a seek is considered
        self._seek_ok = True  # off once a seek lands behind the position (a broken index)
        self._pos: float | None = None  # time of the frame decoded last
        self._error: str | None = None  # the FFmpeg error that ended decoding, if any
        self.end: float | None = None  # time of the last frame, once decoding reached it
        self.past_end = 0  # wanted times past the decodable end of a truncated file (padded)
        self.count = DecodeCount()
        # Frames from the start of the stream, ready to go on from (None once the demuxer
        # moved elsewhere: reaching the start again takes a seek).
        self._start: Iterator[tuple[float, av.VideoFrame]] | None = None
        try:
            self.info, self._length = _video_info(self.container, path)
            self._setup_stream()
            self._first_frame()
        except BaseException:
            self.close()
            raise

    def _setup_stream(self) -> None:
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = self.threads
        self._tb = float(self.stream.time_base)
        self._origin = self.stream.start_time or 0  # pts of the first frame, time_base units
        self._half = 0.5 / self.info.fps  # the nearest frame to t is at t - half or later

    def _first_frame(self) -> None:
        """Decode the first frame: its display matrix turns ``info`` to the shown size (every
        frame carries the stream's matrix; the first one is where a decoder surely finds one)."""
        if not self._own:  # a shared container may stand anywhere, even at its end
            try:
                self.container.seek(self._origin, stream=self.stream, backward=True)
                self.count.seeks += 1
            except av.FFmpegError:
                pass  # not seekable: it was just opened, so it stands at the start
        try:
            frames = self._decoded(sought=False)
            first = next(frames, None)
        except av.FFmpegError as e:
            raise MediaError(f"{self.path}: cannot decode video ({_reason(e)})") from e
        if first is None:
            raise MediaError(f"{self.path}: no video frame could be decoded")
        self.info = self.info.shown(frame_orientation(first[1]))
        if self._own:  # nothing else moves its demuxer: reading from the start goes on here
            self._start = itertools.chain([first], frames)

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the container if this reader opened it."""
        if self._own:
            self.container.close()

    def frames(
        self, times: Sequence[float], *, short_side: int | None = None, pad_truncated: bool = False
    ) -> torch.Tensor:
        """uint8 (T, H, W, 3): the frames nearest to ``times``; arguments, errors and choice
        as :func:`read_frames`."""
        times = [float(t) for t in times]
        if not times:
            raise ValueError("times is empty")
        try:
            try:
                chosen = self._nearest(times, seek=True)
            except _SeekMissed:  # decode from the start, as a file without index would
                self._reopen()
                chosen = self._nearest(times, seek=False)
        except av.FFmpegError as e:
            raise MediaError(f"{self.path}: cannot decode video ({_reason(e)})") from e
        self._check_end(times, pad_truncated)
        shown = _to_arrays(chosen, short_side, self.info.orientation)
        return torch.from_numpy(np.stack(shown))  # (T, H, W, 3)

    def _reopen(self) -> None:
        self.close()
        self.container, self._own = open_media(self.path), True
        self._seek_ok, self._pos = False, None
        self._setup_stream()
        self._start = self._decoded(sought=False)

    def _nearest(self, times: list[float], seek: bool) -> list[av.VideoFrame]:
        """The decoded frame nearest to each time, in the order given."""
        order = sorted(range(len(times)), key=times.__getitem__)
        chosen: list[av.VideoFrame] = [None] * len(times)  # type: ignore[list-item]
        self.end, k = None, 0
        while k < len(order):
            k = self._run(times, order, k, chosen, seek)
        return chosen

    def _run(
        self,
        times: list[float],
        order: list[int],
        k: int,
        chosen: list[av.VideoFrame],
        seek: bool,
    ) -> int:
        """Place the decoder before the ``k``-th wanted time (a seek, or the start), decode on
        and resolve wanted times until all are, a seek reaches the next one sooner, or the
        stream ends. Returns the index in ``order`` of the first unresolved time."""
        start, before, prev = k, self._pos, None  # prev: (time, frame) decoded last in this run
        frames, sought = self._place(times[order[k]], seek)
        for t, frame in frames:
            if prev is None and sought and before is not None and t <= before:
                self._seek_ok = False  # a seek went backwards: the index is not to trust
            while k < len(order) and times[order[k]] <= t:
                w = times[order[k]]
                # the nearer of the previous and this frame; ties go to the earlier frame
                chosen[order[k]] = prev[1] if prev is not None and w - prev[0] <= t - w else frame
                k += 1
            prev, self._pos = (t, frame), t
            if k == len(order):
                return k
            if seek and k > start and self._seek_helps(t, times[order[k]]):
                return k  # (only once this run resolved a time: each run makes progress)
        if prev is None:  # nothing decodes from here
            if sought:
                raise _SeekMissed
            raise MediaError(f"{self.path}: no video frame could be decoded{self._why()}")
        self.end = prev[0]  # the stream ended: later times get its last frame
        for j in order[k:]:
            chosen[j] = prev[1]
        return len(order)

    def _place(self, want: float, seek: bool) -> tuple[Iterator[tuple[float, av.VideoFrame]], bool]:
        """Decoded frames from the keyframe before ``want`` (a seek) or from the start, and
        whether it sought. A seek whose first frame comes after ``want`` (the demuxer picked
        its keyframe by decode time, or the index is off) is retried further back."""
        if seek:
            self._keyframe_times()  # now: without an index this reads the packets
        if not (seek and self._needs_seek(want)):
            assert self._start is not None, "decoding on from a used container without a seek"
            frames, self._start = self._start, None
            return frames, False
        self._start = None
        back = 0.0  # seconds before `want - half` to seek to
        for _ in range(SEEK_TRIES):
            target = self._origin + max(0, int((want - self._half - back) / self._tb))
            try:
                self.container.seek(target, stream=self.stream, backward=True)
            except av.FFmpegError as e:
                raise _SeekMissed from e
            self.count.seeks += 1
            frames = self._decoded(sought=True)
            first = next(frames, None)
            if first is None:  # nothing decodes after it: a cut file
                raise _SeekMissed
            t = first[0]
            if t <= want + LANDING_SLACK_S or t <= 0:
                return itertools.chain([first], frames), True
            back = 2 * back + (t - want) + 1.0
        raise _SeekMissed

    def _needs_seek(self, want: float) -> bool:
        """False only when decoding on from the start reaches ``want`` from its first keyframe."""
        keys = self._keyframe_times()
        return self._start is None or bisect.bisect_right(keys, want - self._half + 1e-6) > 1

    def _seek_helps(self, t: float, want: float) -> bool:
        """Whether the keyframe a seek for ``want`` lands on comes after the frame at ``t``."""
        if not self._seek_ok or want - self._half <= t:
            return False
        keys = self._keyframe_times()
        j = bisect.bisect_right(keys, want - self._half + 1e-6) - 1  # last key at/before it
        return j >= 0 and keys[j] > t + LANDING_SLACK_S

    def _keyframe_times(self) -> list[float]:
        """Display times (s from the first frame) of the keyframes, sorted."""
        if self._keys is None:
            self._keys = self._indexed_keyframes() or self._demuxed_keyframes()
        return self._keys

    def _indexed_keyframes(self) -> list[float]:
        """Keyframe times from the container's index; [] if it has none worth trusting."""
        entries = self.stream.index_entries
        if entries is None or len(entries) == 0:
            return []
        # Index timestamps are decode times: the first entry is the first frame, shown at 0
        # (with B-frames it is decoded a frame or two before it is shown).
        first = entries[0].timestamp
        keys = sorted((e.timestamp - first) * self._tb for e in entries if e.is_keyframe)
        # An index of every frame (mp4, avi) is complete; a sparse one (mkv cues) with a
        # single keyframe may just lack the others.
        complete = len(entries) >= self.info.num_frames - 1
        return keys if keys and (complete or len(keys) > 1) else []

    def _demuxed_keyframes(self) -> list[float]:
        """Keyframe times from one pass over the packet headers (nothing decoded)."""
        keys = []
        try:
            for packet in self.container.demux(self.stream):
                if packet.is_keyframe and packet.pts is not None:
                    keys.append((packet.pts - self._origin) * self._tb)
        except av.FFmpegError:
            pass  # a damaged tail: the keyframes before it are still right
        self._start = None  # the demuxer stands at the end now
        return sorted(keys) or [0.0]

    def _decoded(self, sought: bool) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) from where the demuxer stands. An FFmpeg error after the first frame
        ends the stream there: the decodable end of a damaged or cut file."""
        frames = self.container.decode(self.stream)
        for i in itertools.count():
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.FFmpegError as e:
                if self.count.frames == 0:
                    raise  # nothing decodes at all: not a readable video
                self._error = _reason(e)
                return
            self.count.frames += 1
            t = _frame_time(frame, self._tb, self._origin)
            if t is None:  # no timestamp: count frames, which only works from the start
                if sought:
                    raise _SeekMissed
                t = i / self.info.fps
            yield t, frame

    def _check_end(self, times: list[float], pad: bool) -> None:
        """Raise (or count, with ``pad``) wanted times past the end of a truncated file."""
        if self.end is None:
            return
        decodable = self.end + 1 / self.info.fps
        past = sum(t > self.end + self._half for t in times)
        if past == 0 or not cut_short(self.path, self.stream.index, self._length, decodable):
            return
        if pad:
            self.past_end += past
            return
        raise TruncatedMediaError(
            f"{self.path}: truncated: the header says {self.info.duration:.2f} s of video, "
            f"frames decode to {decodable:.2f} s{self._why()}; {past} of {len(times)} "
            "sampled frame times lie past that"
        )

    def _why(self) -> str:
        return f" (decoding stopped: {self._error})" if self._error else ""


def _frame_time(frame: av.VideoFrame, tb: float, origin: int) -> float | None:
    """Seconds from the first frame, or None if the frame carries no timestamp."""
    pts = frame.pts if frame.pts is not None else frame.dts
    return None if pts is None else (pts - origin) * tb


def _to_arrays(
    frames: list[av.VideoFrame], short_side: int | None, orientation: Orientation
) -> list[np.ndarray]:
    """RGB arrays of ``frames`` as shown, each distinct frame converted once."""
    done: dict[int, np.ndarray] = {}
    for frame in frames:
        if id(frame) not in done:
            done[id(frame)] = orientation.apply(_to_rgb(frame, short_side))  # (H', W', 3)
    return [done[id(frame)] for frame in frames]


def _to_rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """uint8 (H, W, 3) as stored, shrunk so min(H, W) == short_side when it is larger (never
    enlarged). A quarter turn keeps the short side, so the stored frame is shrunk before it is
    turned (fewer pixels to move)."""
    w, h = frame.width, frame.height
    reformat = functools.partial(_reformatter().reformat, frame, format="rgb24", threads=1)
    if short_side is None or min(w, h) <= short_side:
        return reformat().to_ndarray()
    scale = short_side / min(w, h)
    size = (
        (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
    )
    return reformat(width=size[0], height=size[1], interpolation="AREA").to_ndarray()


def _freeze_before_fork() -> None:
    gc.freeze()


# Forked processes never garbage-collect what they inherit. FFmpeg objects with threads (an
# audio resampler's filter graph, a threaded decoder or scaler) that the parent let go but had
# not yet collected come along into a forked process (a DataLoader or ``prepare`` worker)
# without their threads; freeing one there waits for them forever (PyAV 18 deadlocked so,
# even before a DataLoader's worker_init_fn runs). Frozen just before every fork, those objects
# stay out of the child's collections (what the child makes itself is collected as usual);
# the parent unfreezes at once and goes on as before.
os.register_at_fork(before=_freeze_before_fork, after_in_parent=gc.unfreeze)


_REFORMATTERS: dict[int, VideoReformatter] = {}  # process id -> its own swscale context


def _reformatter() -> VideoReformatter:
    """This process's colour converter, made in it, single-threaded.

    PyAV's ``frame.reformat`` / ``to_ndarray(format=...)`` share one swscale context per
    thread (PyAV 18). A forked process (a loader or ``prepare`` worker) inherits that context
    with its slice threads gone, and deadlocks the first time it uses or frees it. So each
    process makes its own here (the inherited ones are kept, never freed), and ``threads=1``
    gives it no threads to lose: every core already runs one worker.
    """
    pid = os.getpid()
    if pid not in _REFORMATTERS:
        _REFORMATTERS[pid] = VideoReformatter()
    return _REFORMATTERS[pid]
