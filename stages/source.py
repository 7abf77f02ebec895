"""Simulator source: :class:`~stages.scene.SceneSimulator` frames as a stream of Frame messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Source
from stages.messages import Frame, TruthPoint
from stages.scene import SceneConfig, SceneSimulator, SceneTruth


@dataclass(frozen=True)
class SimulatorConfig(SceneConfig):
    """Options of :class:`SimulatorSource`: every :class:`SceneConfig` field, plus

    Attributes
    ----------
    seed : int
        Seed of the scene; the same seed gives the same stream.
    frames : int
        Number of frames to emit; 0 streams forever.
    fps : float
        Frame rate that defines the source timestamps: ``t_source_ns = seq · 1e9 / fps``.
        The stage never sleeps; pacing a live run is the runner's job.
    """

    seed: int = 0
    frames: int = 0
    fps: float = 25.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0 (0 = forever), got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


def truth_points(truth: SceneTruth) -> tuple[TruthPoint, ...]:
    """The CSO sub-targets of a frame as records (clutter is not a target and is left out)."""
    return tuple(
        TruthPoint(group=int(g), row=float(r), col=float(c), brightness=float(b))
        for (r, c, b), g in zip(truth.targets, truth.target_group, strict=True)
    )


class SimulatorSource(Source):
    """Yields :class:`Frame` messages (float32 grey levels, truth attached), seq 0, 1, 2, …

    Every iteration restarts the scene from the seed, so two iterations give the same frames.
    """

    Config = SimulatorConfig
    OUTPUT = "frames"

    def __iter__(self) -> Iterator[Frame]:
        cfg = self.config
        scene = SceneSimulator(cfg, seed=cfg.seed)
        seq = 0
        while cfg.frames == 0 or seq < cfg.frames:
            image, truth = scene.step()
            yield Frame(
                seq=seq,
                t_source_ns=round(seq * 1e9 / cfg.fps),
                image=image,
                truth=truth_points(truth),
            )
            seq += 1
