"""Run statistics: per-stage latency and counters, end-to-end latency, and the JSON report.

Latency comes only from the runner's stamps (Unix ns, ``time.time_ns``):

- *processing time* of a stage: its ``.out`` stamp minus its ``.in`` stamp (for the source: the
  time to produce one message);
- *age* of a message at a stage's exit: that exit time minus the earliest stamp the input
  message carries (the source's ``.out``), i.e. queueing + processing along the whole path;
- *end-to-end* latency: the age at the exit of the deepest stage that publishes something
  (the tracker in the standard chain: source frame out -> tracks out); sinks are consumers of
  the result, not part of it. With windows centred two frames back, it is measured from the
  newest frame a result used, so the fixed two-frame delay of the window is not included.

A stage's ``flush`` is counted in its message totals but not in its latency samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Latency samples kept per stage (the most recent ones).
MAX_SAMPLES = 100_000
LINK_COUNTERS = ("dropped", "decode_errors", "seq_gaps", "out_of_order")


class SampleRing:
    """The newest ``size`` int samples (ns) in an array allocated and touched up front.

    A deque of Python ints (the earlier store) grew the tap of a 30-minute soak by 11 MB while
    it filled and cost 11 ms per heartbeat to turn into an array; this costs neither.
    """

    def __init__(self, size: int = MAX_SAMPLES) -> None:
        self._buf = np.full(size, 0, dtype=np.int64)
        #: Samples appended so far (also those overwritten since).
        self.count = 0

    def append(self, value: int) -> None:
        self._buf[self.count % len(self._buf)] = value
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, len(self._buf))

    def values(self) -> np.ndarray:
        """The samples held (a view, in no particular order)."""
        return self._buf[:len(self)]

    def since(self, mark: int) -> np.ndarray:
        """The samples appended after the first ``mark`` ones (at most the ring's size)."""
        n = min(self.count - mark, len(self._buf))
        return self._buf[np.arange(self.count - n, self.count) % len(self._buf)]


def percentiles_ms(samples_ns: Sequence[int] | SampleRing) -> tuple[float, float]:
    """p50 and p99 of durations in ns, in ms (NaN, NaN without samples)."""
    if isinstance(samples_ns, SampleRing):
        samples_ns = samples_ns.values()
    if not len(samples_ns):
        return math.nan, math.nan
    p50, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 99]) / 1e6
    return float(p50), float(p99)


class StageStats:
    """Counters and latency samples of one stage (owned by whoever runs the stage).

    Parameters
    ----------
    name : str
        Stage name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.msgs_in = 0
        self.msgs_out = 0
        #: Inputs skipped because the traced live run did not process them (replay).
        self.skipped = 0
        self.durations = SampleRing()
        self.ages = SampleRing()
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def record(self, t_in: int, t_out: int, n_in: int, n_out: int, age_ns: int | None) -> None:
        """Account one call of the stage.

        Parameters
        ----------
        t_in, t_out : int
            Unix ns before and after the call.
        n_in, n_out : int
            Messages consumed (0 for a source or flush) and emitted.
        age_ns : int or None
            ``t_out`` minus the input's earliest stamp (None when the input has no stamps).
        """
        self.msgs_in += n_in
        self.msgs_out += n_out
        self.durations.append(t_out - t_in)
        if age_ns is not None:
            self.ages.append(age_ns)
        self.first_ns = t_in if self.first_ns is None else self.first_ns
        self.last_ns = t_out

    def record_flush(self, t_out: int, n_out: int) -> None:
        """Account the end-of-stream ``flush`` call (not a latency sample)."""
        self.msgs_out += n_out
        self.last_ns = t_out

    def summary(self, links: Sequence[Mapping[str, int]] = ()) -> dict[str, Any]:
        """Plain-data summary; ``links`` are the receiver counters of the stage's input links."""
        p50, p99 = percentiles_ms(self.durations)
        a50, a99 = percentiles_ms(self.ages)
        out = {
            "p50_ms": p50,
            "p99_ms": p99,
            "msgs_in": self.msgs_in,
            "msgs_out": self.msgs_out,
            "skipped": self.skipped,
            "age_p50_ms": a50,
            "age_p99_ms": a99,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        for key in LINK_COUNTERS:
            out[key] = sum(link.get(key, 0) for link in links)
        return out


def end_to_end(stages: Mapping[str, Mapping[str, Any]], at: str | None) -> dict[str, Any]:
    """End-to-end latency: the age of messages at the exit of stage ``at``.

    Returns
    -------
    dict
        ``p50_ms``, ``p99_ms`` and ``at``.
    """
    if at is None:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "at": None}
    return {"p50_ms": stages[at]["age_p50_ms"], "p99_ms": stages[at]["age_p99_ms"], "at": at}


def throughput(stages: Mapping[str, Mapping[str, Any]], source: str,
               at: str | None) -> dict[str, Any]:
    """How many frames made it through the chain, and where the others were dropped.

    Returns
    -------
    dict
        ``frames_in`` (messages the source produced), ``frames_out`` (messages out of stage
        ``at``, the end of the chain; None without one), ``drop_rate`` (1 − out/in) and
        ``dropped_at`` (stage -> messages its input links dropped, stages that dropped any).
    """
    frames_in = stages[source]["msgs_out"]
    frames_out = stages[at]["msgs_out"] if at is not None else None
    rate = 1 - frames_out / frames_in if frames_out is not None and frames_in else None
    return {"frames_in": frames_in, "frames_out": frames_out, "drop_rate": rate,
            "dropped_at": {name: s["dropped"] for name, s in stages.items() if s["dropped"]}}


def _points_map(summary: Any, key: str) -> float | None:
    """The points-mode CSO-mAP (a fraction) in one stage summary under ``key``, or None."""
    score = summary.get(key) if isinstance(summary, Mapping) else None
    if isinstance(score, Mapping) and score.get("mode") == "points":
        return score.get("mAP")
    return None


def points_cso_map(summaries: Mapping[str, Any], key: str = "cso_map") -> float | None:
    """The points-mode CSO-mAP (a fraction) a scoring sink reported under ``key``, or None."""
    for summary in summaries.values():
        score = _points_map(summary, key)
        if score is not None:
            return score
    return None


def per_sensor_scores(summaries: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The headline scores per sensor, from a scoring sink that scored several sensors (its
    ``per_sensor``): sensor id -> ``frames``, ``cso_map`` and ``cso_map_end_to_end``
    (points mode, fractions); None when no sink scored more than one sensor."""
    for summary in summaries.values():
        sensors = summary.get("per_sensor") if isinstance(summary, Mapping) else None
        if isinstance(sensors, Mapping):
            return {sensor: {"frames": scores.get("frames"),
                             "cso_map": _points_map(scores, "cso_map"),
                             "cso_map_end_to_end": _points_map(scores, "cso_map_end_to_end")}
                    for sensor, scores in sensors.items()}
    return None


def build_report(
    *,
    mode: str,
    source: str,
    stages: Mapping[str, Mapping[str, Any]],
    latency_at: str | None,
    summaries: Mapping[str, Any],
    error: str | None,
    interrupted: bool,
) -> dict[str, Any]:
    """Assemble the run report.

    Parameters
    ----------
    mode : str
        "inline" or "processes".
    source : str
        Name of the source stage; its ``msgs_out`` is the frame count.
    stages : mapping
        Stage name -> :meth:`StageStats.summary`.
    latency_at : str or None
        Stage at whose exit end-to-end latency is measured (see :func:`end_to_end`).
    summaries : mapping
        Stage name -> the stage's ``summary()`` (stages returning None left out); a scoring
        sink's summary is where the scores come from.
    error : str or None
        Why the run failed, if it did.
    interrupted : bool
        True if a signal stopped the run early.

    Returns
    -------
    dict
        ``frames`` (= ``frames_in``), ``wall_s``, ``fps`` (frames in per second),
        ``fps_out`` (frames out per second), the :func:`throughput` keys, ``stages``,
        ``end_to_end``, ``scores``, ``cso_map`` (points-mode CSO-mAP of a scoring sink, a
        fraction, or None), ``cso_map_end_to_end`` (its end-to-end figure, lost frames
        counted as missed; see :mod:`stages.scoring`), ``per_sensor`` (:func:`per_sensor_scores`:
        those figures per sensor in a chain of several sensors, else None; the full per-sensor
        scores are under ``scores``), ``mode``, ``ok``, ``error``, ``interrupted``.
    """
    frames = stages[source]["msgs_out"]
    firsts = [s["first_ns"] for s in stages.values() if s["first_ns"] is not None]
    lasts = [s["last_ns"] for s in stages.values() if s["last_ns"] is not None]
    wall_s = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
    flow = throughput(stages, source, latency_at)
    return {
        "mode": mode,
        "ok": error is None,
        "error": error,
        "interrupted": interrupted,
        "frames": frames,
        "wall_s": wall_s,
        "fps": frames / wall_s if wall_s > 0 else math.nan,
        "fps_out": (flow["frames_out"] / wall_s if wall_s > 0 and flow["frames_out"] is not None
                    else math.nan),
        **flow,
        "stages": {
            name: {k: v for k, v in s.items() if k not in ("first_ns", "last_ns")}
            for name, s in stages.items()
        },
        "end_to_end": end_to_end(stages, latency_at),
        "scores": dict(summaries),
        "cso_map": points_cso_map(summaries),
        "cso_map_end_to_end": points_cso_map(summaries, "cso_map_end_to_end"),
        "per_sensor": per_sensor_scores(summaries),
    }


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_section(path: str | Path, key: str, section: Any) -> Path:
    """Set ``key`` of the JSON object in ``path`` to ``section``, keeping its other keys (the
    benchmarks that share one file, e.g. ``benchmarks/scale.json``); returns the path."""
    path = Path(path)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[key] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as strict JSON (NaN written as null); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2, sort_keys=True) + "\n")
    return path
