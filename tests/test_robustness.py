"""``python -m models robustness``: sets generated when missing, scored, tabled, resumed."""

from __future__ import annotations

import json

import pytest

from models.__main__ import main


def test_robustness_generates_scores_tables_and_resumes(tmp_path, capsys):
    out = tmp_path / "robustness.md"
    argv = ["robustness", "--models", "fastunmix", "--sets", "clean,backgrounds",
            "--data-root", str(tmp_path / "sets"), "--trajectories", "20", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "generating backgrounds: python -m sim generate" in printed
    doc = json.loads(out.with_suffix(".json").read_text())
    for key in ("clean", "backgrounds"):
        result = doc["results"][key]["fastunmix"]
        assert result["trajectories"] == 3 and result["frames"] == 3 * 16  # 15 % test split
        assert result["background_subtracted"] is True
        assert 0 <= result["points"]["mAP"] <= 1 and 0 <= result["grid"]["mAP"] <= 1
        assert 0 < result["snapped"]["mAP"] < result["points"]["mAP"]  # the grid costs AP05
        oracle = doc["oracles"][key]
        assert oracle["snapped"]["mAP"] > oracle["splat"]["mAP"] > oracle["grid"]["mAP"]
    assert doc["results"]["clean"]["fastunmix"]["points"]["mAP"] > 0.5  # shipped weights work
    table = out.read_text()
    assert "| clean, 2–4 targets | 51.55 |" in table and "IR-like backgrounds (Table IV)" in table
    assert "| GT map (grid) | splat map (grid) | GT points (snapped) | fastunmix snapped |" in table
    # a second run finds every pair done with the same weights and scores nothing again
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "grid" not in again.replace("robustness.md", "")
    assert json.loads(out.with_suffix(".json").read_text())["results"] == doc["results"]
    # a pair scored with other extractor settings is scored again
    stale = json.loads(out.with_suffix(".json").read_text())
    stale["results"]["clean"]["fastunmix"]["extractor"]["splat_starts"] = 1
    stale["results"]["backgrounds"]["fastunmix"]["snap_rule"] = "an older rule"
    out.with_suffix(".json").write_text(json.dumps(stale))
    assert main(argv) == 0
    again = capsys.readouterr().out
    scored = [line.split()[0] for line in again.splitlines() if "  points " in line]
    assert scored == ["clean", "backgrounds"], again
    # candidate weights are named per model, and only for a model being scored
    with pytest.raises(SystemExit, match="MODEL=PATH"):
        main([*argv, "--weights", "derefnet=x.pt"])


def test_the_table_says_which_output_each_grid_column_scores():
    from models.robustness import _grid_outputs

    doc = {"models": ["a", "b", "c"], "results": {
        "clean": {"a": {"grid_output": "grid head"}, "b": {"grid_output": "map"},
                  "c": {"grid_output": "map"}},
        "noise2": {"a": {"grid_output": "grid head"}, "b": {}, "c": {"grid_output": "grid head"}}}}
    said = _grid_outputs(doc).split("; ")
    assert said[0].startswith("a's grid head (trained on the snapped truth")
    assert said[1].startswith("b's splat map")  # results from before the key default to map
    assert said[2] == "c's grid head on some sets, its map on others (older results)"
