"""The throughput benchmark runs end to end on a tiny model and writes its report (no timing asserts)."""

import json
import sys

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
