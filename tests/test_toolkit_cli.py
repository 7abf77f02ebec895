"""The toolkit's commands: ``models list``, ``models table`` and ``models compare``."""

import json
import shutil
import statistics

import pytest

from models.__main__ import main
from models.paper import METHOD_NAMES, paper_row
from models.registry import MODELS
from models.weights import default_weights
from sim.dataset import save_npz, simulate


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "test.npz"
    save_npz(path, simulate(2, seed=9))
    return path


def test_every_table_vii_method_is_registered():
    assert set(METHOD_NAMES) <= set(MODELS)
    assert len(METHOD_NAMES) == 23
    assert paper_row("derefnet")["mAP"] == 51.55 and paper_row("fastunmix") is None


def test_list_json_names_family_size_paper_and_weights(capsys):
    assert main(["list", "--json", "--models", "fastunmix,espcn,bid"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["espcn"] == {"name": "espcn", "family": "sr", "params": 22_729,
                             "macs_per_window": 2_737_504, "paper": 47.18,
                             "weights": default_weights("espcn").exists(), "trainable": True}
    assert rows["fastunmix"]["weights"] and rows["fastunmix"]["paper"] is None
    assert rows["bid"]["params"] == 0 and not rows["bid"]["trainable"]


def test_table_scores_models_with_weights_and_names_the_others(test_split, tmp_path, capsys):
    out, js = tmp_path / "t7.md", tmp_path / "t7.json"
    assert main(["table", "--data", str(test_split), "--models", "fastunmix,lista",
                 "--out", str(out), "--json", str(js)]) == 0
    rows = {r["name"]: r for r in json.loads(js.read_text())["rows"]}
    fast = rows["fastunmix"]
    assert fast["status"] == "ok" and fast["points"]["mAP"] > fast["grid"]["mAP"] > 0.3
    assert fast["params"] == 529_313 + 245_841  # the trunk and its grid head (with branch)
    assert fast["windows_per_s"] > 0 and fast["epochs"] > 1
    assert rows["lista"]["status"].startswith("not trained here: python -m models train")
    text = out.read_text()
    assert "| LISTA (`lista`) | 9.39 | not trained here" in text


def test_compare_draws_the_models_that_have_weights(test_split, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["compare", "--models", "fastunmix,lista", "--data", str(test_split),
                 "--trajectory", "1", "--frames", "2,17", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lista: left out" in capsys.readouterr().err


def test_train_many_trains_recipes_in_parallel_scores_them_and_ships_own_recipes(
        data_dir, test_split, tmp_path, monkeypatch, capsys):
    import models.train_many as train_many

    monkeypatch.setattr(train_many, "default_weights", lambda name: tmp_path / f"{name}.pt")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        shutil.copyfile(data_dir / f"{split}.npz", data / f"{split}.npz")
    shutil.copyfile(test_split, data / "test.npz")
    out = tmp_path / "runs"
    args = ["train-many", "--models", "espcn,lamp-faithful", "--budget-minutes", "0.01",
            "--out", str(out), "--set", f"data={data}", "--set", "threads=1",
            "--set", "val_trajectories=1", "--parallel", "2", "--test-trajectories", "1",
            "--ship"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"espcn", "lamp-faithful"}
    for recipe, model in (("espcn", "espcn"), ("lamp-faithful", "lamp")):
        entry = summary[recipe]
        assert entry["status"] == "ok" and entry["budget_minutes"] == 0.01
        assert entry["model"] == model
        assert 0.6 <= entry["train_seconds"] < 5 and entry["steps"] >= 1
        best = json.loads((out / recipe / "best.json").read_text())
        test = best["test_metrics"]
        assert test["set"].startswith("1 trajectories of") and "(test)" in test["set"]
        assert entry["test_grid_mAP"] == test["grid"]["mAP"]
        assert entry["test_points_mAP"] == test["points"]["mAP"]
    assert summary["espcn"]["shipped"] == "shipped" and (tmp_path / "espcn.json").exists()
    assert summary["lamp-faithful"]["shipped"].startswith("not shipped: a variant")
    assert not (tmp_path / "lamp.pt").exists()

    # the run's summary feeds the equal-budget table (params and MACs of each recipe's model)
    md = tmp_path / "t7.md"
    assert main(["table", "--data", str(test_split), "--models", "espcn", "--runs",
                 str(out / "summary.json"), "--out", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("## At an equal budget") and "## The shipped weights" in text
    lamp_row = next(line for line in text.splitlines() if "(`lamp-faithful`)" in line)
    cells = [c.strip() for c in lamp_row.strip("|").split("|")]
    assert cells[:2] == ["LAMP (`lamp-faithful`)", "9.09"]
    assert cells[2] == f"{100 * summary['lamp-faithful']['test_grid_mAP']:.2f}"
    assert cells[-2] == "2,125,728"  # LAMP's learned parameters

    assert main([*args[:2], "nope", *args[3:]]) == 2  # unknown recipe: named, no traceback
    assert "have no recipe in" in capsys.readouterr().err


def test_model_bench_reports_peak_best_and_fraction_of_peak(monkeypatch):
    from models.bench import FP32_VARIANTS, benchmark
    from models.precision import bf16_native

    # numba read its configuration when it was imported: recorded here, changes nothing
    monkeypatch.setenv("NUMBA_CPU_NAME", "haswell")
    report = benchmark("fastunmix", None, repeats=1, compile_=False)
    assert report["machine"]["isa_limits"]["NUMBA_CPU_NAME"] == "haswell"
    assert report["peak_gflops"] > 1 and report["macs_per_window"] == 64_068_048
    samples = report["peak_gflops_samples"]
    assert len(samples) >= 6 and report["peak_gflops"] == statistics.median(samples)
    assert report["peak_gflops_best"] == max(samples)
    best = report["best"]
    assert best["variant"] in FP32_VARIANTS  # no dataset: bf16 is never eligible
    assert best["windows_per_s"] == max(r["windows_per_s"] for k, r in report["results"].items()
                                        if k in FP32_VARIANTS and "windows_per_s" in r)
    spent = report["results"][best["variant"]]["macs_per_window"]
    assert spent == report["macs_per_window"] or best["variant"].startswith("reuse")
    assert report["fraction_of_peak"] == pytest.approx(
        best["windows_per_s"] * 2 * spent / (report["peak_gflops"] * 1e9))
    assert report["best_fp32"] == best and report["fraction_of_peak_fp32"] == pytest.approx(
        report["fraction_of_peak"])
    bf16 = report["results"].get("bf16_b64", {})
    assert ("windows_per_s" in bf16) == bf16_native() == report["machine"]["bf16_native"]
