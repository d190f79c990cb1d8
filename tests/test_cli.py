"""The command line: demo (toy and LLM sections), fit, recommend, evaluate."""
import json
import subprocess
import sys

from flower_lite.cli import main


def test_demo_prints_the_comparison_and_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "subtb" in out and "sft+subtb θ=0.995" in out and "report:" in out
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert rows["subtb"]["kl"] <= 1e-3 < rows["sft"]["kl"]
    assert f"KL {rows['sft+subtb θ=0.995']['kl']:.3g}," in out  # the conclusion quotes the measured numbers
    html = (tmp_path / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 3


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "flower_lite", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "fit", "recommend", "evaluate"):
        assert command in out


def test_fit_recommend_evaluate_round_trip(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["fit", "--loss", "subtb", "--theta", "0.995", "--steps", "4", "--titles", "30", "--sample-size", "64", "--out", run,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["step"] == 4
    assert main(["recommend", "--run", run, "--top", "5"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()[:2].rstrip(".").isdigit()]
    assert len(lines) == 5
    assert main(["evaluate", "--run", run]) == 0
    table = capsys.readouterr().out
    assert "KL(P‖Q)" in table and "lower is better" in table and "mean popularity rank" in table
    assert main(["evaluate", "--run", run, "--json"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{") :])
    assert 0 <= metrics["c_tv"] <= 1 and metrics["c_kl"] >= 0 and 1 <= metrics["mean_pop_rank"] <= 30


def test_compare_prints_and_writes_the_rq2_table(tmp_path, capsys):
    out = tmp_path / "rq2.json"
    assert main(["compare", "--steps", "1", "--train-rows", "200", "--valid-rows", "4", "--test-rows", "6",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert record["command"].startswith("flower-lite compare --steps 1 --train-rows 200")
    assert record["environment"]["torch"] and record["environment"]["seconds"] > 0
    assert record["environment"]["torch_threads"] == 1  # the tiny run's threads, not the default's
    assert record["environment"]["peak_rss_mib"] > 100
    methods = [r["method"] for r in rows]
    assert methods == ["popularity", "SASRec", "BIGRec (SFT)", "SFT T=1.5", "D3", "IFairLRS", "Flower", "R_u ceiling (div_s)"]
    for r in rows:
        assert 0 <= r["ndcg@10"] <= r["hit@10"] <= 1 and 0 <= r["mgu"] <= r["dgu"] <= 2
        assert 10 <= r["coverage"] and r["invalid"] == 0
    assert rows[0]["coverage"] == 10  # popularity: the same 10 items for every row
    printed = capsys.readouterr().out
    assert "BIGRec (SFT)" in printed and "NDCG@10" in printed and "lower is fairer" in printed


def test_compare_objectives_parse_a_loss_a_mix_and_a_theta_grid():
    import argparse

    import pytest

    from flower_lite.cli import _objective
    from flower_lite.config import Objective

    assert _objective("distill") == Objective("distill")
    assert _objective("db:0.995") == Objective("db", theta=0.995)
    assert _objective("db:0.99,0.995") == (Objective("db", theta=0.99), Objective("db", theta=0.995))
    for bad in ("sft", "db:2", "db:x", "nope:0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="db|LOSS|theta"):
            _objective(bad)


def test_compare_over_seeds_reports_means_and_intervals(tmp_path, capsys):
    out = tmp_path / "seeds.json"
    assert main(["compare", "--steps", "1", "--train-rows", "200", "--valid-rows", "4", "--test-rows", "6",
                 "--methods", "popularity", "BIGRec (SFT)", "--seeds", "0", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    per_seed = record["per_seed"]
    assert set(per_seed) == {"0", "1"}
    for row in record["rows"]:
        values = [next(r for r in per_seed[s] if r["method"] == row["method"])["hit@10"] for s in ("0", "1")]
        assert row["seeds"] == 2 and abs(row["hit@10"] - sum(values) / 2) < 1e-4
        assert row["hit@10_lo"] <= row["hit@10"] <= row["hit@10_hi"]
    pop = next(r for r in record["rows"] if r["method"] == "popularity")
    d_dgu = [next(r for r in per_seed[s] if r["method"] == "popularity")["d_dgu"] for s in ("0", "1")]
    assert abs(pop["d_dgu"] - sum(d_dgu) / 2) < 1e-4 and pop["d_dgu_lo"] <= pop["d_dgu"] <= pop["d_dgu_hi"]
    assert "d_tail_share" in pop
    assert main(["compare", "--seeds", "3", "3"]) == 2
    assert "at least 2 different seeds" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0", "1", "--objectives", "db:0.9,0.99"]) == 2
    assert "θ grid" in capsys.readouterr().err
