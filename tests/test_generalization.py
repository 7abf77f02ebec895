"""``python -m models generalization`` on a tiny budget: sets generated from their recipe,
the ceiling and per-K columns present, the JSON complete, and a second run resumes."""

import json

import numpy as np

from models.__main__ import main
from models.generalization import SETS
from sim import load_dataset


def test_generalization_table_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "gen.md"
    argv = ["generalization", "--models", "fastunmix", "--sets", "single,psf06",
            "--data-root", str(tmp_path / "data"), "--trajectories", "20",
            "--limit-trajectories", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    text = out.read_text()
    assert "| set | windows | bound | fit | fastunmix points |" in text
    assert "K=1" in text and "Jaccard" in text and "RMSE/√CRLB" in text
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["commit"] and doc["machine"]["cpu_capability"]
    assert doc["seeds"]["psf06"] == next(s.seed for s in SETS if s.key == "psf06")
    single = doc["results"]["single"]
    assert single["windows"] == 32 and single["ceiling"]["trajectories"] == 2
    assert single["ceiling"]["crlb"]["mAP"] > 0.99  # a lone target is easy to localise
    assert single["ceiling"]["fit"]["cso"]["mAP"] > 0.99
    assert set(single["fastunmix"]["points"]["count_accuracy"]) == {"1"}
    assert load_dataset(tmp_path / "data" / "psf06", "test").sigma == 0.6
    psf = doc["results"]["psf06"]
    assert psf["psf"] == 0.6 and 0 <= psf["fastunmix"]["grid"]["mAP"] <= 1
    first = {k: v["fastunmix"]["seconds"] for k, v in doc["results"].items()}
    assert "fastunmix  points" in capsys.readouterr().out
    assert main(argv) == 0  # resumes: nothing is scored again
    again = json.loads(out.with_suffix(".json").read_text())
    assert {k: v["fastunmix"]["seconds"] for k, v in again["results"].items()} == first
    assert "fastunmix  points" not in capsys.readouterr().out
    assert np.isfinite(again["results"]["single"]["ceiling"]["crlb"]["AP05"])
