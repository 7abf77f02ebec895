"""MCAP recordings: a recorder sink that writes any set of topics, and a reader.

File layout (see ``docs/wire-format.md``, "Recordings"): one MCAP channel per topic, message
encoding ``msgpack``, no schema (schema id 0: every message describes itself), zstd-compressed
chunks. Each MCAP message is one blob from :func:`pipeline.wire.codec.encode_record` (the wire
header plus the buffers as ``bin`` values). ``log_time`` and ``publish_time`` are the message's
``t_source_ns`` (clamped at 0), so MCAP time seeks address the sensor timeline; the runner's
wall-clock stamps stay inside the header. A metadata record ``csist.pipeline`` holds the
effective config of the run that made the file (key ``config``, YAML).

A recording is finished (summary and index written) when the recorder stops: at the end of a
run and on SIGINT/SIGTERM. The recorder also flushes a chunk every ``flush_s`` seconds of
source time, so a process killed outright (SIGKILL, power loss) leaves a file that
:func:`read_recording` still reads up to the last complete chunk (it falls back to mcap's
stream reader when the file has no summary).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from mcap.reader import make_reader
from mcap.records import Channel, Metadata
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from pipeline.attach.trace import TRACE_METADATA, SeqTrace, read_trace
from pipeline.wire.codec import DEFAULT_LIMITS, DecodeError, Limits, decode_record, encode_record
from stages.base import TopicSink
from stages.messages import Message, PipelineError

logger = logging.getLogger(__name__)

MESSAGE_ENCODING = "msgpack"
LIBRARY = "csist-pipeline"
#: Name of the metadata record holding the run's effective config.
CONFIG_METADATA = "csist.pipeline"
#: Pause between looks for the stages' trace files (s).
TRACE_POLL_S = 0.05
COMPRESSIONS = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
                "none": CompressionType.NONE}


class RecordingError(PipelineError, ValueError):
    """A recording cannot be read; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    """Options of :class:`McapRecorder`.

    Attributes
    ----------
    path : str
        Output file (``.mcap``); its folder is created. An existing file is replaced.
    compression : str
        Chunk compression: "zstd" (default), "lz4" or "none".
    chunk_bytes : int
        Uncompressed chunk size at which a chunk is written.
    flush_s : float
        A chunk is also written once this much source time (``t_source_ns``) has passed since
        the last one, bounding what a killed process loses.
    config_yaml : str
        Effective config of the run, stored as the ``csist.pipeline`` metadata record.
    trace_dir : str or None
        Folder where the stages of a multi-process run leave their input traces
        (:mod:`pipeline.attach.trace`); the recorder stores them at the end of its stream.
    trace_stages : tuple of str
        Stages whose traces to wait for.
    trace_wait_s : float
        Longest wait for them; the recording then goes without traces (with a warning).
    """

    path: str
    compression: str = "zstd"
    chunk_bytes: int = 1 << 20
    flush_s: float = 1.0
    config_yaml: str = ""
    trace_dir: str | None = None
    trace_stages: tuple[str, ...] = ()
    trace_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, "
                             f"got {self.compression!r}")
        if self.chunk_bytes < 1024 or self.flush_s <= 0:
            raise ValueError("chunk_bytes must be >= 1024 and flush_s > 0")


class McapRecorder(TopicSink):
    """Sink writing every message it receives to an MCAP file (see the module docstring).

    The plan sets ``INPUTS`` (the recorded topics) on the instance. The file is finished in
    :meth:`stop`, which every runner calls at the end of a run, after an error, and when a
    signal stops the run.
    """

    Config = RecorderConfig

    def __init__(self, config: RecorderConfig) -> None:
        super().__init__(config)
        self._file: BinaryIO | None = None
        self._writer: Writer | None = None
        self._channels: dict[str, int] = {}
        self._last_flush_ns: int | None = None
        self.counts: Counter[str] = Counter()

    def start(self) -> None:
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # closed in stop()
        self._writer = Writer(self._file, chunk_size=self.config.chunk_bytes,
                              compression=COMPRESSIONS[self.config.compression])
        self._writer.start(profile="", library=LIBRARY)
        if self.config.config_yaml:
            self._writer.add_metadata(CONFIG_METADATA, {"config": self.config.config_yaml})
        self._writer.flush()

    def process_topic(self, topic: str, msg: Message) -> Iterable[Message]:
        if self._writer is None:
            raise RuntimeError("McapRecorder.start() was not called")
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._writer.register_channel(
                topic, MESSAGE_ENCODING, 0, {"schema": msg.SCHEMA, "version": str(msg.VERSION)}
            )
            self._channels[topic] = channel
        log_time = max(msg.t_source_ns, 0)
        self._writer.add_message(channel, log_time=log_time, data=encode_record(msg, topic),
                                 publish_time=log_time, sequence=msg.seq & 0xFFFFFFFF)
        self.counts[topic] += 1
        if self._last_flush_ns is None:
            self._last_flush_ns = log_time
        elif log_time - self._last_flush_ns >= self.config.flush_s * 1e9:
            self._writer.flush()
            self._last_flush_ns = log_time
        return ()

    def flush(self) -> Iterable[Message]:
        """At the end of the stream: store the stages' input traces, if any."""
        cfg = self.config
        if cfg.trace_dir is None or not cfg.trace_stages or self._writer is None:
            return ()
        deadline = time.monotonic() + cfg.trace_wait_s
        traces: dict[str, SeqTrace | None] = dict.fromkeys(cfg.trace_stages)
        while True:
            for stage in [s for s, t in traces.items() if t is None]:
                traces[stage] = read_trace(cfg.trace_dir, stage)
            missing = [s for s, t in traces.items() if t is None]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(TRACE_POLL_S)
        if missing:
            logger.warning("no input trace from %s: the recording has none, and a lossless "
                           "replay processes every input", missing)
            return ()
        self._writer.add_metadata(TRACE_METADATA, {"stages": json.dumps(
            {stage: trace.to_dict() for stage, trace in traces.items()})})
        return ()

    def stop(self) -> None:
        """Finish the file (summary and index) and close it; safe to call twice."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.finish()
        if self._file is not None:
            self._file.close()
            self._file = None
            logger.info("recorded %d messages to %s", sum(self.counts.values()), self.config.path)

    def summary(self) -> dict[str, Any]:
        return {"path": self.config.path, "messages": dict(sorted(self.counts.items()))}


# ---------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class RecordingInfo:
    """What a recording holds.

    Attributes
    ----------
    path : Path
    finished : bool
        False when the file has no summary (the recorder was killed); it is then read with
        the stream reader up to its last complete chunk.
    topics : dict of str -> int
        Messages per topic (for an unfinished file: the readable ones).
    start_ns : int or None
        Earliest ``log_time`` (= ``t_source_ns``) of the recording; None when empty.
    end_ns : int or None
        Latest ``log_time``.
    config_yaml : str or None
        Effective config of the run that made it (``csist.pipeline`` metadata).
    traces : dict of str -> SeqTrace, or None
        Input traces of the stages of a multi-process run (``csist.trace`` metadata).
    """

    path: Path
    finished: bool
    topics: dict[str, int]
    start_ns: int | None
    end_ns: int | None
    config_yaml: str | None
    traces: dict[str, SeqTrace] | None = None


def _summary(stream: BinaryIO) -> Any:
    """The summary of a finished file, or None when there is none (unfinished file)."""
    try:
        return make_reader(stream).get_summary()
    except Exception:  # mcap raises several types on a file without a footer
        return None


def _stream_records(stream: BinaryIO, path: Path) -> Iterator[Any]:
    """Records of a file read front to back, stopping quietly at a truncated record."""
    stream.seek(0)
    try:
        yield from StreamReader(stream).records
    except Exception as exc:  # EndOfFile, a torn chunk: what was read so far is kept
        logger.warning("%s is unfinished (no summary: was the recorder killed?); read up to "
                       "its last complete chunk (%s)", path, type(exc).__name__)


def _raw_messages(
    stream: BinaryIO, path: Path, summary: Any, topics: Sequence[str] | None,
    start_ns: int | None, end_ns: int | None,
) -> Iterator[tuple[str, int, bytes]]:
    """(topic, log_time, data) of the messages in file order; a finished file skips the chunks
    outside the topics and time range through its index, an unfinished one is read whole."""
    if summary is not None:
        reader = make_reader(stream)
        messages = reader.iter_messages(
            topics=None if topics is None else list(topics), log_time_order=False,
            starting_at=start_ns, ending_before=end_ns,
        )
        while True:
            try:
                _, channel, message = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # zstd/lz4 or record parsing: the bytes are damaged
                raise RecordingError(f"{path}: a chunk is damaged and cannot be read "
                                     f"({type(exc).__name__}: {exc})") from exc
            yield channel.topic, message.log_time, message.data
    channels: dict[int, str] = {}
    for record in _stream_records(stream, path):
        if isinstance(record, Channel):
            channels[record.id] = record.topic
        elif isinstance(record, McapMessage):
            yield channels.get(record.channel_id, "?"), record.log_time, record.data


def _open(path: str | Path) -> tuple[Path, BinaryIO]:
    path = Path(path)
    try:
        stream = open(path, "rb")  # closed by the callers
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open the recording ({exc.strerror})") from exc
    if stream.read(8) != b"\x89MCAP0\r\n":
        stream.close()
        raise RecordingError(f"{path}: not an MCAP file (bad magic); record one with "
                             f"`python -m pipeline run CONFIG --record FILE`")
    stream.seek(0)
    return path, stream


def _traces(path: Path, text: str) -> dict[str, SeqTrace]:
    try:
        return {stage: SeqTrace(ranges) for stage, ranges in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise RecordingError(f"{path}: the {TRACE_METADATA} record is corrupt ({exc})") from exc


def recording_info(path: str | Path) -> RecordingInfo:
    """Describe a recording (an unfinished file is scanned to its last complete chunk).

    Raises
    ------
    RecordingError
        The file cannot be opened or is not MCAP.
    """
    path, stream = _open(path)
    with stream:
        summary = _summary(stream)
        config_yaml = traces = None
        if summary is not None:
            stats = summary.statistics
            topics = Counter()
            for channel_id, count in (stats.channel_message_counts if stats else {}).items():
                topics[summary.channels[channel_id].topic] += count
            for record in make_reader(stream).iter_metadata():
                if record.name == CONFIG_METADATA:
                    config_yaml = record.metadata.get("config")
                elif record.name == TRACE_METADATA:
                    traces = _traces(path, record.metadata.get("stages", "{}"))
            empty = stats is None or stats.message_count == 0
            return RecordingInfo(path, True, dict(topics),
                                 None if empty else stats.message_start_time,
                                 None if empty else stats.message_end_time, config_yaml, traces)
        topics, times, channels = Counter(), [], {}
        for record in _stream_records(stream, path):
            if isinstance(record, Channel):
                channels[record.id] = record.topic
            elif isinstance(record, McapMessage):
                topics[channels.get(record.channel_id, "?")] += 1
                times.append(record.log_time)
            elif isinstance(record, Metadata) and record.name == CONFIG_METADATA:
                config_yaml = record.metadata.get("config")
        return RecordingInfo(path, False, dict(topics), min(times, default=None),
                             max(times, default=None), config_yaml)


def read_recording(
    path: str | Path,
    topics: Sequence[str] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[tuple[str, Message]]:
    """Decoded messages of a recording in file (= recording) order.

    Parameters
    ----------
    path : path
    topics : sequence of str, optional
        Only these topics (default: all).
    start_ns, end_ns : int, optional
        Only messages with ``start_ns <= log_time < end_ns`` (absolute ``t_source_ns``).
    limits : Limits
        Decoder limits (a recording is untrusted input like any message).

    Yields
    ------
    (topic, Message)

    Raises
    ------
    RecordingError
        The file cannot be opened, is not MCAP, or holds a message that does not decode
        (the message names the topic and the rule).
    """
    wanted = None if topics is None else set(topics)
    path, stream = _open(path)
    with stream:
        summary = _summary(stream)
        for topic, log_time, data in _raw_messages(stream, path, summary, topics, start_ns,
                                                   end_ns):
            if wanted is not None and topic not in wanted:
                continue
            if (start_ns is not None and log_time < start_ns) or (
                end_ns is not None and log_time >= end_ns
            ):
                continue
            try:
                recorded_topic, msg = decode_record(data, limits)
            except DecodeError as exc:
                raise RecordingError(f"{path}: a message on {topic!r} does not decode: "
                                     f"{exc}") from exc
            if recorded_topic != topic:
                raise RecordingError(f"{path}: a message on channel {topic!r} names topic "
                                     f"{recorded_topic!r}; the file is inconsistent")
            yield topic, msg
