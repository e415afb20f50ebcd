"""The throughput benchmarks run end to end on a tiny model and write their reports (no timing asserts)."""

import json
import sys

import pytest
import torch

from tests.conftest import REPO


def run_pretrain_bench(monkeypatch, *argv: str) -> dict:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pretrain_throughput as bench

    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        report = bench.main(["--preset", "tiny", "--hidden", "64", "--layers", "2", "--steps", "3", "--warmup", "1",
                             "--window", "1", "--batch-size", "4", "--seq-len", "32", "--vocab", "300",
                             "--compile", "off", "--peak-seconds", "0.1", *argv])
    finally:
        sys.modules.pop("pretrain_throughput", None)
    # The run leaves process-wide state as it found it (Lightning turns deterministic algorithms on).
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
    return report


def test_pretrain_benchmark_races_both_trainer_setups_on_a_users_text_files(tmp_path, monkeypatch):
    names, places = ["Ada", "Bo", "Cy", "Di", "Ed"], ["the mill", "the port", "the hill", "the lake"]
    texts = [f"{names[i % 5]} walked to {places[i % 4]} on day {i}. {names[(i + 2) % 5]} stayed home and read."
             for i in range(120)]
    for i in range(4):
        (tmp_path / f"part{i}.txt").write_text("\n\n".join(texts[i::4]) + "\n")
    out = tmp_path / "bench.json"
    report = run_pretrain_bench(monkeypatch, "--corpus", str(tmp_path / "*.txt"), "--out", str(out))

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"config", "peak_flops", "results", "environment"}
    # 5% of the documents held out for the held-out loss; the rest trained on.
    assert 0.8 * sum(len(t.encode()) for t in texts) < report["config"]["corpus_bytes"] < sum(len(t.encode()) for t in texts)
    assert report["peak_flops"]["fp32"] > 0
    assert {"torch", "device", "threads", "lmforge_precision"} <= set(report["environment"])
    precision = report["environment"]["lmforge_precision"][0]
    for model in ("bert", "gpt"):
        result = report["results"][model]
        assert set(result["rows"]) == {f"lmforge {precision}", "Trainer defaults 32", f"Trainer best {precision}",
                                      f"Trainer best eager {precision}"}
        for name, row in result["rows"].items():
            assert row["timed_steps"] == 2 and row["tokens_per_s"] > 0 and row["timed_seconds"] > 0
            assert 0 < row["median_step_seconds"] <= row["timed_seconds"] and row["tokens_per_s_median"] > 0
            assert row["final_loss"] > 0 and row["heldout_loss"] > 0
            assert set(row["heldout_loss_by_format"]) == {"lmforge_format", "reference_format"}
            assert set(row["mfu"]) == set(report["peak_flops"]) and all(v > 0 for v in row["mfu"].values())
            peak = "bf16" if "bf16" in row["precision"] else "fp32"
            assert row["mfu_at_precision"] == row["mfu"][peak]
            assert row["side"] == ("lmforge" if name.startswith("lmforge") else "trainer")
        strongest = result["rows"][result["strongest_reference"]]
        assert strongest["tokens_per_s"] == max(r["tokens_per_s"] for r in result["rows"].values() if r["side"] == "trainer")
        ratio = result["vs_strongest"][f"lmforge {precision}"]
        lmforge = result["rows"][f"lmforge {precision}"]
        assert ratio["speedup"] == lmforge["tokens_per_s"] / strongest["tokens_per_s"]
        fastest_median = max(r["tokens_per_s_median"] for r in result["rows"].values() if r["side"] == "trainer")
        assert ratio["speedup_median_step"] == lmforge["tokens_per_s_median"] / fastest_median
        assert result["best"] == f"lmforge {precision}" and result["speedup"] == ratio["speedup"]
    # The best Trainer trains on lmforge's own GPT blocks: the same tokens per step.
    gpt = report["results"]["gpt"]["rows"]
    assert gpt[f"Trainer best {precision}"]["tokens_per_step"] == gpt[f"lmforge {precision}"]["tokens_per_step"] == 4 * 32


def run_finetune_bench(monkeypatch, *argv: str) -> dict:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import finetune_throughput as bench

    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        report = bench.main(["--preset", "tiny", "--hidden", "64", "--layers", "2", "--epochs", "1", "--batch-size", "8",
                             "--vocab", "300", "--skip", "1", "--window", "2", "--precision", "32", *argv])
    finally:
        sys.modules.pop("finetune_throughput", None)
    # The run leaves process-wide state as it found it (Lightning turns deterministic algorithms on).
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
    return report


def test_finetune_benchmark_races_both_trainer_setups_and_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/bert-pretrained here: auto falls back to random weights
    out = tmp_path / "bench.json"
    report = run_finetune_bench(monkeypatch, "--tasks", "mnli", "--glue-train", "40", "--glue-eval", "10",
                                "--documents", "60", "--out", str(out))

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"config", "results", "summary", "environment"}
    assert report["config"]["init_used"].startswith("random weights, preset tiny, (2, 64, 1, 256)")
    for task, dev_rows in (("mnli", 20),):  # matched and mismatched dev (SST-2: the next test)
        result = report["results"][task]
        rows = result["rows"]
        assert set(rows) == {"lmforge 32", "Trainer defaults 32", "Trainer best 32", "Trainer best eager 32"}
        assert result["dev_examples"] == dev_rows and result["train_examples"] == 40
        for row in rows.values():
            assert row["steps"] == 5 and row["timed_steps"] == 4  # ceil(40 / 8) steps, the first untimed
            assert row["timed_examples"] == 32 and row["examples_per_s"] == 32 / row["timed_seconds"]
            assert 0 <= row["dev_score"] <= 1 and row["final_loss"] > 0
        # The defaults pad every row to 128 tokens; lmforge and the best Trainer pad each batch to its
        # longest row, batching rows of similar length.
        defaults, best, lmforge = rows["Trainer defaults 32"], rows["Trainer best 32"], rows["lmforge 32"]
        assert defaults["positions_per_s"] * defaults["timed_seconds"] == pytest.approx(32 * 128)
        assert defaults["padding_fraction"] > 0.5 > max(lmforge["padding_fraction"], best["padding_fraction"])
        assert defaults["tokens_per_s"] * defaults["timed_seconds"] == pytest.approx(
            lmforge["tokens_per_s"] * lmforge["timed_seconds"], rel=0.25)  # similar real tokens, other batches
        strongest = rows[result["strongest_reference"]]
        assert strongest["examples_per_s"] == max(r["examples_per_s"] for n, r in rows.items() if n.startswith("Trainer"))
        ratio = result["vs_strongest"]["lmforge 32"]
        assert ratio["speedup"] == lmforge["examples_per_s"] / strongest["examples_per_s"]
        assert ratio["dev_score_difference"] == lmforge["dev_score"] - strongest["dev_score"]
        assert ratio["speedup_vs_defaults"] == lmforge["examples_per_s"] / defaults["examples_per_s"]
    summary = report["summary"]
    assert summary["best"] == "lmforge 32"
    assert summary["speedup"] == pytest.approx(report["results"]["mnli"]["vs_strongest"]["lmforge 32"]["speedup"])


def test_finetune_benchmark_races_once_per_seed_and_averages_the_dev_scores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_finetune_bench(monkeypatch, "--tasks", "sst2", "--glue-train", "40", "--glue-eval", "10",
                                "--documents", "60", "--seeds", "0,1", "--out", str(tmp_path / "bench.json"))
    result = report["results"]["sst2"]
    for row in result["rows"].values():
        assert row["steps"] == 5 and row["timed_steps"] == 8 and row["timed_examples"] == 64  # 4 timed steps a seed
        assert set(row["dev_score_by_seed"]) == {0, 1} and set(row["dev_by_seed"]) == {0, 1}
        assert row["dev_score"] == pytest.approx(sum(row["dev_score_by_seed"].values()) / 2)
    lmforge, strongest = result["rows"]["lmforge 32"], result["rows"][result["strongest_reference"]]
    # the seeds train differently (the head's draw, the batches, dropout), on both sides
    for row in (lmforge, strongest):
        assert row["final_loss_by_seed"][0] != row["final_loss_by_seed"][1]
        assert row["final_loss"] == pytest.approx(sum(row["final_loss_by_seed"].values()) / 2)
    differences = result["vs_strongest"]["lmforge 32"]["dev_score_difference_by_seed"]
    assert differences == {seed: pytest.approx(lmforge["dev_score_by_seed"][seed] - strongest["dev_score_by_seed"][seed])
                           for seed in (0, 1)}


def test_finetune_benchmark_runs_on_a_users_glue_folder(tmp_path, monkeypatch):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [f"the film was {words[i % 6]} and {'very ' * (i % 5)}long\t{(i % 6) % 2 == 0:d}" for i in range(48)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:40]) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[40:]) + "\n")
    monkeypatch.chdir(tmp_path)
    report = run_finetune_bench(monkeypatch, "--glue-dir", str(folder), "--task", "SST-2", "--vocab", "100",
                                "--out", str(tmp_path / "bench.json"))
    assert list(report["results"]) == ["sst2"]
    assert report["config"]["data"] == f"GLUE folder {folder} (SST-2)"
    result = report["results"]["sst2"]
    assert result["train_examples"] == 40 and result["dev_examples"] == 8
    assert all(row["timed_examples"] == 32 for row in result["rows"].values())


def test_contestants_start_from_the_state_the_race_began_with_and_keep_their_own(monkeypatch):
    """Lightning turns deterministic algorithms on for lmforge's side; the Trainer racing it must not
    inherit them (it runs without, as alone), and each side keeps its own flags across hand-overs."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import racing

    seen = {"a": [], "b": []}

    def contestant(name: str, deterministic: bool | None):
        def contest(turns):
            if deterministic is not None:
                torch.use_deterministic_algorithms(deterministic)
            clock = racing.Clock(turns, total=4, warmup=1, window=1)
            for _ in range(4):
                seen[name].append(torch.are_deterministic_algorithms_enabled())
                clock.step_end({"input_ids": torch.ones(1, 2)}, torch.tensor(1.0))
            return clock.steps
        return contest

    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        assert racing.Turns([contestant("a", True), contestant("b", None)]).run() == [3, 3]
    finally:
        torch.use_deterministic_algorithms(before)
    assert seen == {"a": [True] * 4, "b": [False] * 4}
