"""``python -m stages.detector_eval``: Pd, Fa and IoU of the detector on simulated scenes.

Runs the scene simulator (flat, or cluttered with ``--scene builtin|DIR``), detects in every
frame, scores the detections with :mod:`stages.detection_metrics` and times the detector
(median ms per frame, one thread). Example::

    python -m stages.detector_eval --frames 300 --scene builtin --amplitude 40 --out det.json
    python -m stages.detector_eval --scene builtin --amplitude 40 --set kind=dnanet
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from models.config import ConfigError, build_config, parse_override, set_path
from models.machine import cpu_model
from stages.detection_metrics import DISTANCE, DetectionScore, group_centroids, truth_mask
from stages.detector import LEARNED_KINDS, DetectorConfig, detect
from stages.scene import SceneConfig, SceneSimulator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.detector_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200, help="frames to score (default 200)")
    p.add_argument("--scenes", type=int, default=10,
                   help="simulators (each with its own scene) the frames are split over "
                        "(default 10)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--size", type=int, default=256, help="frame side (px, default 256)")
    p.add_argument("--groups", type=int, default=6, help="CSO groups in the scene (default 6)")
    p.add_argument("--noise", type=float, default=1.0, help="noise σ (grey levels, default 1)")
    p.add_argument("--scene", help="textured scene: builtin or a folder of IR frames "
                                   "(default: flat)")
    p.add_argument("--amplitude", type=float, default=40.0,
                   help="the scene's full scale in grey levels (default 40 = medium)")
    p.add_argument("--drift", type=float, default=0.0, help="scene pan (px/frame, default 0)")
    p.add_argument("--distance", type=float, default=DISTANCE,
                   help=f"Pd matching distance (px, default {DISTANCE:g})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a DetectorConfig field, e.g. --set k=6; repeatable")
    p.add_argument("--out", help="JSON file for the figures")
    return p.parse_args(argv)


def evaluate(scene: SceneConfig, detector: DetectorConfig, frames: int, seed: int,
             distance: float = DISTANCE, scenes: int = 10) -> dict:
    """Pd/Fa/IoU of ``detector`` over ``frames`` frames of ``scene`` and its median time per
    frame (ms). The frames come from ``scenes`` simulators (seeds ``seed`` … ``seed +
    scenes − 1``, each with its own textured scene when ``scene.scene`` is set), since a
    detector's false alarms depend on the scene far more than on the frame."""
    score = DetectionScore(distance=distance)
    times = []
    per_scene = -(-frames // scenes)
    sims = [SceneSimulator(scene, seed=seed + i) for i in range(scenes)]
    for i in range(frames):
        image, truth = sims[i // per_scene].step()
        tic = time.perf_counter()
        blobs, mask = detect(image, detector)
        times.append(1e3 * (time.perf_counter() - tic))
        score.add(blobs[:, :2], blobs[:, 3], group_centroids(truth), image.size, mask,
                  truth_mask(truth, image.shape, scene.psf_sigma))
    return {**score.summary(), "ms_per_frame_median": statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    values: dict = {}
    try:
        for pair in args.set:
            set_path(values, *parse_override(pair))
        detector = build_config(DetectorConfig, values, "--set")
        scene = SceneConfig(height=args.size, width=args.size, groups=args.groups,
                            noise_sigma=args.noise, scene=args.scene,
                            scene_amplitude=args.amplitude, scene_drift=args.drift)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    if detector.kind in LEARNED_KINDS:  # one thread, as the live chain's detector stage
        import torch

        torch.set_num_threads(1)
        try:
            detect(np.zeros((args.size, args.size), np.float32), detector)  # load, untimed
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    result = evaluate(scene, detector, args.frames, args.seed, args.distance, args.scenes)
    doc = {"scene": {"size": args.size, "groups": args.groups, "noise": args.noise,
                     "scene": args.scene, "amplitude": args.amplitude, "drift": args.drift,
                     "seed": args.seed, "scenes": args.scenes},
           "detector": dataclasses.asdict(detector),
           "cpu": cpu_model(), **result}
    print(f"Pd {100 * result['Pd']:.2f} %  Fa {result['Fa']:.2e}  IoU "
          f"{result['IoU'] if result['IoU'] is None else round(100 * result['IoU'], 2)}  "
          f"({result['frames']} frames, {result['groups']} groups, "
          f"{result['ms_per_frame_median']:.2f} ms/frame)")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
