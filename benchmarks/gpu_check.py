"""The check to run on a machine with GPUs: bf16 pretraining and fine-tuning on 1 and (where there are
two) 2 devices through `lmforge stage`, as users run them.

For each run it reports tokens/s (pretraining) or seconds (fine-tuning) and MFU against the bf16
matmul peak measured on the same GPU, and whether two devices give the results of one:
- GPT pretraining without dropout on 1 device at batch 2B and on 2 devices at batch B sees the
  same global batches in the same order, so its final validation loss must match (bf16 tolerance);
- every multi-device run's reported validation numbers must equal those one process gives for its
  exported weights (the whole split gathered from the ranks).

    python benchmarks/gpu_check.py                     # writes reports/bench/gpu_check.json
    python benchmarks/gpu_check.py --preset small --steps 200

It builds a project in a temporary folder (the built-in demo data) and leaves the repository as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.components.pretraining.throughput import measure_peak_flops  # noqa: E402


def lmforge(root: Path, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lmforge.components.cli", *args], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise SystemExit(f"lmforge {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def project(root: Path, preset: str, steps: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for model in ("bert", "gpt"):
        params["pretrain"][model]["model"]["preset"] = preset
        params["pretrain"][model]["train"].update(max_steps=steps, precision="bf16-mixed", accelerator="gpu",
                                                  val_every_n_steps=steps, checkpoint_every_n_steps=steps)
    params["finetune"].update(runs={}, train={**params["finetune"]["train"], "precision": "bf16-mixed",
                                              "accelerator": "gpu", "max_epochs": 2})
    params["prompt"]["runs"] = {}
    params["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def on(devices: int, section: str, batch: int, **more) -> list[str]:
    values = {"devices": devices, "strategy": "ddp" if devices > 1 else "auto", "batch_size": batch, **more}
    return [a for k, v in values.items() for a in ("-S", f"{section}.train.{k}={v}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="per device, on the most devices")
    parser.add_argument("--out", default=str(REPO / "reports" / "bench" / "gpu_check.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a machine with GPUs")
    gpus = min(torch.cuda.device_count(), 2)
    peak = measure_peak_flops("cuda", torch.bfloat16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project(root, args.preset, args.steps)
        lmforge(root, "stage", "ingest")
        lmforge(root, "stage", "tokenizer")
        for devices in range(1, gpus + 1):
            for model in ("bert", "gpt"):
                # The same global batch on 1 and 2 devices; GPT without dropout, so the two runs must agree.
                extra = ["-S", "pretrain.gpt.model.dropout=0.0"] if model == "gpt" else []
                out = f"models/{model}-{devices}gpu"
                seconds = lmforge(root, "stage", f"pretrain-{model}", *on(devices, f"pretrain.{model}",
                                                                          args.batch * gpus // devices), *extra,
                                  "-S", f"pretrain.{model}.out_dir={out}", "-S", f"pretrain.{model}.run_dir=runs/{out}",
                                  "-S", f"pretrain.{model}.metrics=reports/{model}-{devices}.json")
                metrics = json.loads((root / f"reports/{model}-{devices}.json").read_text())
                # The stage measures MFU against the peak of the precision it trains in: bf16 here.
                rows.append({"run": f"pretrain-{model}", "devices": devices, "seconds": seconds,
                             "tokens_per_s": metrics["tokens_per_s"], "mfu_bf16": metrics["mfu"],
                             "val_loss": metrics["val_loss"]})
            for task in ("sst2", "squad"):
                seconds = lmforge(root, "stage", "finetune", "-S", f"finetune.task={task}", "-S",
                                  "finetune.init=models/bert-1gpu", *on(devices, "finetune", args.batch * gpus // devices),
                                  "-S", f"finetune.models_dir=models/ft-{devices}")
                report = json.loads((root / f"reports/metrics/bert-bert-1gpu-{task}.json").read_text())
                rows.append({"run": f"finetune-{task}", "devices": devices, "seconds": seconds,
                             report["main_metric"]: report["score"]})
    pairs = {(r["run"], r["devices"]): r for r in rows}
    match = {}
    if gpus == 2:
        one, two = pairs[("pretrain-gpt", 1)]["val_loss"], pairs[("pretrain-gpt", 2)]["val_loss"]
        match["gpt_val_loss_1_vs_2_devices"] = {"one": one, "two": two, "equal": abs(one - two) <= 0.02 * one}
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "bf16_peak_flops": peak, "preset": args.preset,
              "steps": args.steps, "rows": rows, "ddp_matches_one_device": match}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'run':<18} {'devices':>7} {'seconds':>8} {'tokens/s':>10} {'MFU bf16':>8}")
    for r in rows:
        print(f"{r['run']:<18} {r['devices']:>7} {r['seconds']:>8.1f} {r.get('tokens_per_s', 0):>10.0f} "
              f"{r.get('mfu_bf16', 0):>8.1%}")
    print(json.dumps(match, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
