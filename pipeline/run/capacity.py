"""Before the first frame: what the chain's unmixer and extractor can hold on this machine,
against the load the config asks for.

Each of the two stages is built from its plan and timed on synthetic frames of the chain's
group count (median of a few calls after a warm-up, in this process); the cost is cached per
machine, stage config and weights file in ``$XDG_CACHE_HOME/csist-pipeline/capacity.json``
(default ``~/.cache``), so a second run starts at once (a changed model or stage source file
measures again). The load is the source's ``groups``
windows per frame at ``run.rate_hz`` frames/s (unknown for a source that does not say how
many groups it holds, and unpaced chains have no load to compare with).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from sim.geometry import HR, WINDOW
from stages.messages import Maps, WindowInfo, Windows

logger = logging.getLogger(__name__)

#: Stage kinds whose cost is measured (the per-window work of the chain).
MEASURED = ("unmixer", "extractor")
#: Windows per frame when the source does not say how many groups it holds.
DEFAULT_WINDOWS = 6
#: Fraction of the spare cores the measured stages may need before the chain is "tight".
HEADROOM = 0.5


def cache_path() -> Path:
    """The capacity cache file of this user."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "csist-pipeline" / "capacity.json"


def machine_key() -> str:
    """What makes a cost figure valid: processor, core count, torch CPU capability."""
    import torch

    return (f"{platform.processor() or platform.machine()}|{os.cpu_count()} cpus|"
            f"{torch.backends.cpu.get_cpu_capability()}|torch {torch.__version__}")


def code_stamp() -> str:
    """Latest modification (ns) of the models' and stages' code: a changed model invalidates
    its cost as a new weights file does."""
    root = Path(__file__).resolve().parents[2]
    return str(max(p.stat().st_mtime_ns for d in ("models", "stages")
                   for p in (root / d).rglob("*.py")))


def _weights_stamp(config: Any) -> str:
    """Size and mtime of the unmixer's weights file (a new file invalidates the cost)."""
    from models.weights import default_weights

    model = getattr(config, "model", None)
    if model is None:
        return ""
    path = Path(config.weights) if config.weights else default_weights(model)
    return f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else "none"


def frame_load(plans: list, run_config: Any) -> dict[str, Any]:
    """Windows per frame, frames/s and windows/s the config asks for (rate None = unpaced)."""
    source = plans[0].config
    groups = getattr(source, "groups", None)
    rate = run_config.rate_hz
    return {"windows_per_frame": groups, "frames_per_s": rate,
            "windows_per_s": None if groups is None or rate is None else groups * rate}


def _synthetic_frames(n: int, count: int, seed: int = 0) -> list[Windows]:
    """``count`` ≤ 16 consecutive Windows messages of ``n`` tracks of simulated 2–4-target
    patches: message t holds window t of each track, so like the cropper's output each
    message brings one new frame per track (what a per-frame feature cache sees)."""
    from models.protocol import eval_windows
    from sim.dataset import simulate

    patches, frame_index, _ = eval_windows(simulate(n, seed=seed))  # 16 windows per track
    frames = []
    for t in range(count):
        rows = [track * 16 + t for track in range(n)]
        info = tuple(WindowInfo(blob_id=i, origin_row=0, origin_col=0,
                                frame_index=int(frame_index[r])) for i, r in enumerate(rows))
        frames.append(Windows(seq=t, t_source_ns=0, windows=info,
                              patches=np.ascontiguousarray(patches[rows], dtype=np.float32)))
    return frames


def _median_ms(fn, repeats: int) -> float:
    from models.bench import call_seconds

    return 1e3 * statistics.median(call_seconds(fn, repeats))


def measure(plans: list, windows_per_frame: int, repeats: int = 5) -> dict[str, float]:
    """Median ms per frame of ``windows_per_frame`` windows of each measured stage, on
    consecutive frames of the same tracks."""
    stages = {p.kind: p for p in plans if p.kind in MEASURED}
    frames = _synthetic_frames(windows_per_frame, repeats + 2)
    frame = frames[-1]
    costs: dict[str, float] = {}
    maps = None
    if "unmixer" in stages:
        unmixer = stages["unmixer"].build()
        # its start-up lines (the weights loaded, a PSF the weights were not trained for) are
        # the chain's own unmixer's to say, once
        unmixer_log = logging.getLogger("stages.unmixer")
        level = unmixer_log.level
        unmixer_log.setLevel(logging.ERROR)
        try:
            unmixer.start()
        finally:
            unmixer_log.setLevel(level)
        stream = iter(frames[:-1])
        costs["unmixer"] = _median_ms(lambda: unmixer.process(next(stream)), repeats)
        (maps,) = unmixer.process(frame)
    if "extractor" in stages:
        if maps is None:  # no unmixer in the chain: the extractor's cost on flat maps
            maps = Maps(seq=0, t_source_ns=0, windows=frame.windows, patches=frame.patches,
                        maps=np.zeros((windows_per_frame, HR, HR), np.float32))
        extractor = stages["extractor"].build()
        costs["extractor"] = _median_ms(lambda: extractor.process(maps), repeats)
    return costs


def stage_costs(plans: list, windows_per_frame: int) -> dict[str, float]:
    """:func:`measure`, through the per-machine cache."""
    machine = machine_key()
    code = code_stamp()
    keys = {p.kind: json.dumps([machine, p.kind, repr(p.config), _weights_stamp(p.config),
                                code, windows_per_frame, WINDOW])
            for p in plans if p.kind in MEASURED}
    path = cache_path()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}  # a broken cache is measured again and rewritten
    costs = {kind: cache[key] for kind, key in keys.items() if key in cache}
    if len(costs) < len(keys):
        costs = measure(plans, windows_per_frame)
        cache.update({keys[kind]: ms for kind, ms in costs.items()})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1) + "\n")
        except OSError as exc:
            logger.warning("capacity: cannot write the cache %s (%s)", path, exc)
    return costs


def check(plans: list, run_config: Any) -> dict[str, Any]:
    """Costs (ms per frame), capacity (frames/s each stage holds alone, times its replicas),
    the cores the two stages together need at the configured rate, the load, and the verdict
    line."""
    load = frame_load(plans, run_config)
    n = load["windows_per_frame"] or DEFAULT_WINDOWS
    costs = stage_costs(plans, n)
    rate = load["frames_per_s"]
    replicas = {p.kind: p.replicas for p in plans}
    result = {"windows_per_frame": n, "ms_per_frame": costs,
              "frames_per_s": {kind: 1e3 / ms * replicas.get(kind, 1)
                               for kind, ms in costs.items() if ms > 0},
              "cores_needed": None if rate is None else sum(costs.values()) * rate / 1e3,
              "cores": os.cpu_count(), "load": load, "machine": machine_key()}
    result["fits"] = _fits(result)
    result["line"] = _line(result, plans)
    return result


def _fits(result: dict[str, Any]) -> str | None:
    """``"fits"``, ``"tight"`` or ``"no"`` (None for an unpaced chain).

    "no": a stage alone cannot keep the rate, or the two together need more than the cores
    left after one for the rest of the chain. "tight": they need more than ``HEADROOM`` of
    those cores: with every stage in its own process they slow each other down (measured on 2
    AVX2 cores: at 0.75 of a core for fastunmix and the extractor, each took 2.5× its
    stand-alone time in the chain, which dropped 16–18 % of 150 frames).
    """
    rate = result["load"]["frames_per_s"]
    if rate is None:
        return None
    spare = max(1, result["cores"] - 1)
    if any(fps < rate for fps in result["frames_per_s"].values()) or \
            result["cores_needed"] > spare:
        return "no"
    return "tight" if result["cores_needed"] > HEADROOM * spare else "fits"


def _line(result: dict[str, Any], plans: list) -> str:
    """One line: what each stage holds here, what the chain needs, and whether it fits."""
    labels = {p.kind: (f"{p.kind} ({p.config.model})" if hasattr(p.config, "model") else p.kind)
              for p in plans}
    n, load = result["windows_per_frame"], result["load"]
    held = "; ".join(
        f"{labels[kind]} {result['ms_per_frame'][kind]:.1f} ms per frame of {n} windows "
        f"(~{fps:.0f} frames/s alone)" for kind, fps in result["frames_per_s"].items())
    if load["frames_per_s"] is None:
        return f"capacity here: {held}; the source is unpaced (no load to compare)"
    need = (f"at {load['frames_per_s']:g} frames/s they need {result['cores_needed']:.2f} of "
            f"{result['cores']} cores")
    remedy = ("fewer groups, a lower run.rate_hz, a faster model, stages.unmixer.device=cuda, "
              "stages.unmixer.replicas=2 where cores are free, or "
              "stages.unmixer.frame_budget_ms=30 to reuse maps instead of dropping frames")
    verdict = {"fits": "it fits",
               "tight": f"tight: expect some dropped frames ({remedy})",
               "no": f"this chain cannot keep up and will drop frames ({remedy})"}
    return f"capacity here: {held}; {need}: {verdict[result['fits']]}"
