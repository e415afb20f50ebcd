"""The throughput benchmarks run end to end on a tiny model and write their reports (no timing asserts)."""

import json
import sys

import pytest
import torch

from tests.conftest import REPO


def test_pretrain_benchmark_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pretrain_throughput as bench

    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    out = tmp_path / "bench.json"
    try:
        report = bench.main(["--preset", "tiny", "--hidden", "64", "--layers", "2", "--steps", "3", "--warmup", "1",
                             "--window", "1", "--batch-size", "4", "--seq-len", "32", "--documents", "60",
                             "--vocab", "300", "--compile", "off", "--peak-seconds", "0.1", "--out", str(out)])
    finally:
        sys.modules.pop("pretrain_throughput", None)

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"config", "peak_flops", "results", "environment"}
    assert report["peak_flops"]["fp32"] > 0
    assert {"torch", "device", "threads", "lmforge_precision"} <= set(report["environment"])
    precision = report["environment"]["lmforge_precision"][0]
    for model in ("bert", "gpt"):
        result = report["results"][model]
        assert set(result["rows"]) == {f"lmforge {precision}", "reference 32"}
        for row in result["rows"].values():
            assert row["timed_steps"] == 2 and row["tokens_per_s"] > 0 and row["timed_seconds"] > 0
            assert row["final_loss"] > 0 and row["heldout_loss"] > 0
            assert set(row["heldout_loss_by_format"]) == {"lmforge_format", "reference_format"}
            assert set(row["mfu"]) == set(report["peak_flops"]) and all(v > 0 for v in row["mfu"].values())
        ratio = result["vs_reference"][f"lmforge {precision}"]
        lmforge, reference = result["rows"][f"lmforge {precision}"], result["rows"]["reference 32"]
        assert ratio["speedup"] == lmforge["tokens_per_s"] / reference["tokens_per_s"]
        assert result["best"] == f"lmforge {precision}" and result["speedup"] == ratio["speedup"]
    # The run leaves process-wide state as it found it (Lightning turns deterministic algorithms on).
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)


def test_finetune_benchmark_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(tmp_path)  # no models/bert-pretrained here: auto falls back to random weights
    import finetune_throughput as bench

    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    out = tmp_path / "bench.json"
    try:
        report = bench.main(["--tasks", "sst2,mnli", "--preset", "tiny", "--hidden", "64", "--layers", "2",
                             "--epochs", "1", "--batch-size", "8", "--glue-train", "40", "--glue-eval", "10",
                             "--documents", "60", "--vocab", "300", "--skip", "1", "--window", "2",
                             "--precision", "32", "--out", str(out)])
    finally:
        sys.modules.pop("finetune_throughput", None)

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"config", "results", "summary", "environment"}
    assert report["config"]["init_used"].startswith("random weights, preset tiny, (2, 64, 1, 256)")
    for task, dev_rows in (("sst2", 10), ("mnli", 20)):  # MNLI: matched and mismatched dev
        result = report["results"][task]
        assert set(result["rows"]) == {"lmforge 32", "reference 32"} and result["dev_examples"] == dev_rows
        for row in result["rows"].values():
            assert row["steps"] == 5 and row["timed_steps"] == 4  # ceil(40 / 8) steps, the first untimed
            assert row["timed_examples"] == 32 and row["examples_per_s"] == 32 / row["timed_seconds"]
            assert 0 <= row["dev_score"] <= 1 and row["final_loss"] > 0
        # The reference pads every row to 128 tokens; lmforge pads each batch to its longest row.
        reference, lmforge = result["rows"]["reference 32"], result["rows"]["lmforge 32"]
        assert reference["positions_per_s"] * reference["timed_seconds"] == pytest.approx(32 * 128)
        assert reference["padding_fraction"] > 0.5 > lmforge["padding_fraction"]
        assert reference["tokens_per_s"] * reference["timed_seconds"] == pytest.approx(
            lmforge["tokens_per_s"] * lmforge["timed_seconds"], rel=0.25)  # similar real tokens, other batches
        ratio = result["vs_reference"]["lmforge 32"]
        assert ratio["speedup"] == lmforge["examples_per_s"] / reference["examples_per_s"]
        assert ratio["dev_score_difference"] == lmforge["dev_score"] - reference["dev_score"]
    summary = report["summary"]
    speedups = [report["results"][t]["vs_reference"]["lmforge 32"]["speedup"] for t in ("sst2", "mnli")]
    assert summary["best"] == "lmforge 32"
    assert summary["speedup"] == pytest.approx((speedups[0] * speedups[1]) ** 0.5)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
