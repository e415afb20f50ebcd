"""The throughput benchmark runs end to end on a tiny model and writes its report (no timing asserts)."""

import json
import sys

from tests.conftest import REPO


def test_pretrain_benchmark_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pretrain_throughput

    out = tmp_path / "bench.json"
    report = pretrain_throughput.main(["--preset", "tiny", "--hidden", "64", "--layers", "2", "--steps", "4",
                                       "--warmup", "1", "--batch-size", "4", "--seq-len", "32", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for model in ("bert", "gpt"):
        result = report["results"][model]
        for side in ("lmforge", "reference"):
            assert result[side]["tokens_per_s"] > 0 and result[side]["final_loss"] > 0 and result[side]["mfu"] > 0
        assert result["speedup"] == result["lmforge"]["tokens_per_s"] / result["reference"]["tokens_per_s"]
    assert report["peak_flops"]["fp32"] > 0
    sys.modules.pop("pretrain_throughput", None)
