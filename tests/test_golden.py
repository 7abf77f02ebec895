"""Golden output: a seeded simulator clip through the whole chain with the shipped weights.

The expected points and tracks live in ``tests/expect/golden_clip.jsonl``; regenerate them
after an intended change with ``ACCEPT=1 python -m pytest tests/test_golden.py``.
Positions are compared to 2e-3 px (float differences between CPUs), counts and ids exactly.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.__main__ import main

EXPECT = Path(__file__).parent / "expect" / "golden_clip.jsonl"


def run_clip(folder: Path) -> list[dict]:
    out = folder / "clip.jsonl"
    config = folder / "clip.yaml"
    config.write_text(f"""
run: {{frames: 24, mode: inline, rate_hz: null}}
stages:
  - {{name: source, kind: simulator, config: {{seed: 11, height: 96, width: 96, groups: 3}}}}
  - {{name: detector, kind: detector}}
  - {{name: cropper, kind: cropper}}
  - {{name: unmixer, kind: unmixer, config: {{model: fastunmix, threads: 1}}}}
  - {{name: extractor, kind: extractor}}
  - {{name: tracker, kind: tracker}}
  - {{name: jsonl, kind: jsonl, config: {{path: {out}, decimals: 4}}}}
""")
    assert main(["run", str(config)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def rows(records: list[dict], key: str, fields: tuple[str, ...]) -> list[np.ndarray]:
    return [np.array([[r[f] for f in fields] for r in rec[key]], dtype=float)
            .reshape(-1, len(fields)) for rec in records]


def test_seeded_clip_matches_the_golden_output(tmp_path):
    got = run_clip(tmp_path)
    if os.environ.get("ACCEPT") == "1":
        shutil.copy(tmp_path / "clip.jsonl", EXPECT)
    expected = [json.loads(line) for line in EXPECT.read_text().splitlines()]
    assert [r["seq"] for r in got] == [r["seq"] for r in expected]
    assert sum(len(r["points"]) for r in got) > 30  # the clip really unmixes something
    for key, fields, ids in (("points", ("row", "col"), "window_id"),
                             ("tracks", ("row", "col"), "id")):
        for g, e, rg, re in zip(rows(got, key, fields), rows(expected, key, fields),
                                got, expected, strict=True):
            assert g.shape == e.shape, f"frame {rg['seq']}: {key} count changed"
            np.testing.assert_allclose(g, e, atol=2e-3, err_msg=f"frame {rg['seq']} {key}")
            assert [p[ids] for p in rg[key]] == [p[ids] for p in re[key]]
