"""Simulator source: :class:`~stages.scene.SceneSimulator` frames as a stream of Frame messages.

With ``sensors: N`` the source simulates N independent sensors, each its own scene (its own
seed, :func:`sensor_seed`, and its own groups), and sends their frames round-robin under one
``seq``: seq s is frame s // N (its ``sensor_seq``) of sensor s mod N. Each sensor's clock
runs at ``fps``, so frames of different sensors share a ``t_source_ns`` and the stream
carries N × fps frames per second of source time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stages.base import Source
from stages.messages import Frame, TruthPoint
from stages.scene import SceneConfig, SceneSimulator, SceneTruth


@dataclass(frozen=True)
class SimulatorConfig(SceneConfig):
    """Options of :class:`SimulatorSource`: every :class:`SceneConfig` field, plus

    Attributes
    ----------
    seed : int
        Seed of the scene (of sensor 0; the others derive theirs, :func:`sensor_seed`); the
        same seed gives the same stream.
    frames : int
        Number of frames to emit per sensor; 0 streams forever.
    fps : float
        Frame rate of each sensor, which defines the source timestamps:
        ``t_source_ns = sensor_seq · 1e9 / fps``. The stage never sleeps; pacing a live run
        is the runner's job (``run.rate_hz`` paces messages: N × fps for real time).
    sensors : int
        Number of simulated sensors, each an independent scene of these options.
    """

    seed: int = 0
    frames: int = 0
    fps: float = 25.0
    sensors: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0 (0 = forever), got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {self.sensors}")


def sensor_seed(seed: int, sensor: int) -> int:
    """Seed of the scene of ``sensor`` in a simulator seeded with ``seed``: ``seed`` itself
    for sensor 0 (one sensor gives the stream it always gave), a seed drawn from
    ``SeedSequence([seed, sensor])`` for the others. A sensor of a several-sensor run equals
    a one-sensor run seeded with its seed.

    >>> sensor_seed(7, 0)
    7
    """
    if sensor == 0:
        return seed
    return int(np.random.SeedSequence([seed, sensor]).generate_state(1)[0])


def truth_points(truth: SceneTruth) -> tuple[TruthPoint, ...]:
    """The CSO sub-targets of a frame as records (clutter is not a target and is left out)."""
    return tuple(
        TruthPoint(group=int(g), row=float(r), col=float(c), brightness=float(b))
        for (r, c, b), g in zip(truth.targets, truth.target_group, strict=True)
    )


class SimulatorSource(Source):
    """Yields :class:`Frame` messages (float32 grey levels, truth attached), seq 0, 1, 2, …,
    the sensors' frames in turn (see the module docstring).

    Every iteration restarts the scenes from their seeds, so two iterations give the same
    frames.
    """

    Config = SimulatorConfig
    OUTPUT = "frames"
    SENSOR_FIELDS = {"psf_sigma": "psf_sigma"}

    def __iter__(self) -> Iterator[Frame]:
        cfg = self.config
        scenes = [SceneSimulator(cfg, seed=sensor_seed(cfg.seed, sensor))
                  for sensor in range(cfg.sensors)]
        sensor_seq = 0
        while cfg.frames == 0 or sensor_seq < cfg.frames:
            for sensor, scene in enumerate(scenes):
                image, truth = scene.step()
                yield Frame(
                    seq=sensor_seq * cfg.sensors + sensor,
                    t_source_ns=round(sensor_seq * 1e9 / cfg.fps),
                    sensor=sensor,
                    sensor_seq=sensor_seq,
                    image=image,
                    truth=truth_points(truth),
                )
            sensor_seq += 1
