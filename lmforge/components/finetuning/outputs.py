"""What a finished fine-tuning run leaves behind, the same for every task: the HF model folder,
reports/metrics/<name>.json, one predictions JSONL, and the scores and report in its MLflow run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge.components.atomic import atomic_dir, write_json, write_text
from lmforge.components.config import FinetuneConfig, FinetuneRun, TrackingConfig
from lmforge.components.training.trainer import unwrap
from lmforge.components.tracking import flatten_params

log = logging.getLogger(__name__)


def run_metrics(run: FinetuneRun, metric: str, results: dict[str, dict], score: float, steps: int) -> dict:
    """The metrics JSON: the run, its main metric, each scored split's metrics, one summary score."""
    seed = {} if run.seed is None else {"seed": run.seed}
    aux = {"aux_lm_weight": run.aux_lm_weight} if run.aux_lm_weight else {}
    return {"task": run.task, "model": run.model, "init": run.init, **seed, **aux, "main_metric": metric,
            **results, "score": score, "steps": steps}


def publish(cfg: FinetuneConfig, run: FinetuneRun, tracking: TrackingConfig, run_id: str | None, model, tokenizer,
            metrics: dict, predictions: list[dict]) -> Path:
    """Export `model` beside its tokenizer as models/<name>, write the metrics and predictions,
    log them to the run's MLflow run (None: tracking off). Returns the model folder."""
    model = unwrap(model)
    # A standard HF config field: the evaluate stage reads it to know which task's data and
    # metrics a folder belongs to (the head alone cannot tell squad from squad_v2).
    model.config.finetuning_task = run.task
    out = Path(cfg.models_dir) / run.name
    with atomic_dir(out) as tmp:  # a half-written folder never replaces a good one
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    report = write_json(Path(cfg.reports_dir) / f"{run.name}.json", metrics)
    write_text(Path(cfg.predictions_dir) / f"{run.name}.jsonl",
               "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions))
    if run_id is not None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking.uri)
        scores = {k: v for k, v in metrics.items() if isinstance(v, dict)}  # {split: metrics}
        for name, value in flatten_params(scores, "").items():  # validation/f1, validation/per_entity.PER.f1, ...
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(run_id, name.replace(".", "/", 1), value)
        client.log_artifact(run_id, str(report), "reports")
    log.info("finetune %s: %s", run.name, metrics)
    return out
