"""Register models in MLflow: a pyfunc-servable transformers model per version, lineage tags,
and the promotion gate that moves the `champion` alias.

Every new version gets `candidate`. It takes `champion` only if its main metric on the same
evaluation set beats the champion's by at least `min_improvement` (the first version wins).
"Same evaluation set" is checked, not assumed: when the evaluation data changed since the
champion was scored, the champion is scored again on today's data before the two are compared.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

from components.config import RegistryConfig, TrackingConfig
from components.errors import LmforgeError
from components.tracking import client_run, tracking_client

log = logging.getLogger(__name__)

# transformers' pipeline task for each head we export; the pyfunc model serves that pipeline.
PIPELINE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForTokenClassification": "token-classification",
    "ForPreTraining": "fill-mask",
    "ForMaskedLM": "fill-mask",
    "LMHeadModel": "text-generation",
}
CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass
class Candidate:
    """A model folder about to be registered, with the number the gate compares."""

    name: str                   # run name, e.g. bert-sst2
    model_dir: Path
    metric: str                 # e.g. accuracy, f1, val_perplexity
    value: float
    higher_is_better: bool
    eval_data_hash: str         # what `value` was measured on
    input_example: object
    lineage: dict[str, str]     # git commit, DVC hashes, params hash, training run


@dataclass
class Registration:
    model: str
    version: int
    metric: str
    value: float
    champion_value: float | None
    promoted: bool
    reason: str
    run_id: str
    skipped: bool = False


def pipeline_task(model_dir: Path) -> str:
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    for suffix, task in PIPELINE_TASKS.items():
        if any(a.endswith(suffix) for a in architectures):
            return task
    raise LmforgeError(f"{model_dir}: cannot register architecture {architectures}; expected one of "
                       f"{', '.join('*' + s for s in PIPELINE_TASKS)}")


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference for this flavour imports torchvision, which we do not install.
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "transformers", "torch", "tokenizers", "safetensors")]


def _save_qa_pyfunc(candidate: Candidate, out: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    import components
    from components.serving import QuestionAnsweringModel

    example = pd.DataFrame([candidate.input_example])
    mlflow.pyfunc.save_model(str(out), python_model=QuestionAnsweringModel(),
                             artifacts={"model": str(candidate.model_dir)},
                             code_paths=[str(Path(components.__file__).parent)],  # the wrapper imports lmforge
                             signature=infer_signature(example, ["an answer"]), input_example=example,
                             pip_requirements=_pip_requirements())


def _save_pyfunc(candidate: Candidate, task: str, out: Path) -> None:
    if task == "question-answering":
        return _save_qa_pyfunc(candidate, out)
    import huggingface_hub
    import mlflow.transformers
    from huggingface_hub import ModelCard
    from transformers import pipeline

    pipe = pipeline(task, model=str(candidate.model_dir), tokenizer=str(candidate.model_dir))
    example = candidate.input_example  # MLflow infers the signature by running the pipeline on it
    card = ModelCard(f"---\nlibrary_name: transformers\npipeline_tag: {task}\ntags: [lmforge]\n---\n"
                     f"# {candidate.name}\n\nTrained by lmforge. {candidate.metric}: {candidate.value:.4f}\n")
    # Our models are local folders: without this, MLflow asks the Hub for a card and license and
    # waits out its retries on an offline machine.
    with mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
        mlflow.transformers.save_model(pipe, str(out), task=task, input_example=example,
                                       pip_requirements=_pip_requirements(), model_card=card)


def _champion(client, name: str, alias: str = CHAMPION):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_model_dir(client, name: str, tracking: TrackingConfig, dest: Path, alias: str = CHAMPION) -> Path:
    """The HF folder (weights + tokenizer) of `name@alias`, downloaded from the registry into `dest`."""
    import mlflow.artifacts

    version = _champion(client, name, alias)
    if version is None:
        raise LmforgeError(f"registered model {name!r} has no {alias!r} alias")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest),
                                                     tracking_uri=tracking.uri))
    folder = dest / "hf"
    if (local / "model" / "config.json").exists():  # transformers flavour: weights and tokenizer apart
        shutil.copytree(local / "model", folder)
        for file in (local / "components" / "tokenizer").glob("*"):
            shutil.copy(file, folder / file.name)
    else:  # our QA pyfunc: the HF folder is one of its artifacts
        shutil.copytree(next(p.parent for p in (local / "artifacts").rglob("config.json")), folder)
    return folder


def resolve_init(init: str, tracking: TrackingConfig, models_dir: str) -> str:
    """A fine-tuning init as the stage takes it: `init` itself, or for models:/<name>[@<alias>]
    (alias default: champion) the HF folder it is downloaded to once, <models_dir>/registry/<name>-<alias>.
    A missing model or alias fails before anything is written."""
    if not init.startswith("models:/"):
        return init
    uri = init
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.atomic import atomic_dir

    name, _, alias = uri.removeprefix("models:/").partition("@")
    alias = alias or CHAMPION
    if tracking.uri.startswith("sqlite:///") and not Path(tracking.uri.removeprefix("sqlite:///")).is_file():
        raise LmforgeError(f"init {uri}: no MLflow registry at {tracking.uri} (no such file); expected "
                           "tracking.uri to name the store the model was registered in")
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        raise LmforgeError(f"init {uri}: no registered model {name!r} in the registry at {tracking.uri}") from None
    if alias not in aliases:
        raise LmforgeError(f"init {uri}: registered model {name!r} has no alias {alias!r} "
                           f"(its aliases: {', '.join(sorted(aliases)) or 'none'})")
    dest = Path(models_dir) / "registry" / f"{name}-{alias}"
    if not dest.exists():
        with tempfile.TemporaryDirectory() as tmp, atomic_dir(dest) as out:
            shutil.copytree(champion_model_dir(client, name, tracking, Path(tmp), alias), out, dirs_exist_ok=True)
    return str(dest)


def register(candidate: Candidate, cfg: RegistryConfig, tracking: TrackingConfig,
             rescore: Callable[[Path], float] | None = None) -> Registration:
    """Log `candidate` as a new version of <prefix><name>, tag its lineage, apply the gate.

    `rescore(model_dir)` scores a model folder on the current evaluation set; it is needed only
    when the champion was measured on other data. A model whose weights are already registered
    (same DVC hash of its folder) is not registered twice.
    """
    name = f"{cfg.prefix}{candidate.name}"
    if not math.isfinite(candidate.value):  # a NaN would never lose the gate's comparison, nor win it
        raise LmforgeError(f"registry: {candidate.name} has {candidate.metric} = {candidate.value}, not a number the "
                           f"gate can compare; {candidate.model_dir} is not registered")
    client = tracking_client(tracking, f"registration of {name}")
    if same := _already_registered(_versions_holding(client, name, candidate), name, candidate):
        return same

    task = pipeline_task(candidate.model_dir)
    with client_run(tracking, f"register-{candidate.name}", {"lmforge.stage": "register"}) as (client, run_id):
        with tempfile.TemporaryDirectory() as tmp:
            _save_pyfunc(candidate, task, Path(tmp) / "model")
            client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
        tags = {**candidate.lineage, "metric.name": candidate.metric, "metric.value": str(candidate.value),
                "metric.higher_is_better": str(candidate.higher_is_better), "eval_data": candidate.eval_data_hash,
                "pipeline_task": task}
        # One registration of this model at a time from here to the aliases: two at once would both
        # read the same champion and both move `champion`, the last write winning, not the best model.
        with registry_lock(tracking.uri, name):
            versions = _versions_holding(client, name, candidate)
            if same := _already_registered(versions, name, candidate):  # registered meanwhile by another process
                client.set_tag(run_id, "gate.decision", same.reason)
                return same
            _drop_interrupted(client, name, versions)
            _create_registered_model(client, name, f"lmforge {candidate.name} ({task})")
            version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
            client.set_registered_model_alias(name, CANDIDATE, version.version)

            champion = _champion(client, name)
            champion_value, promoted, reason = _gate(client, name, candidate, champion, cfg, tracking, rescore)
            if promoted:
                client.set_registered_model_alias(name, CHAMPION, version.version)
            for key, value in {"gate.decision": CHAMPION if promoted else CANDIDATE, "gate.reason": reason,
                               "gate.champion_value": "" if champion_value is None else str(champion_value)}.items():
                client.set_model_version_tag(name, version.version, key, value)
        client.log_param(run_id, "registered_model", f"{name}/{version.version}")
        client.log_metric(run_id, f"gate/candidate_{candidate.metric}", candidate.value)
        if champion_value is not None:
            client.log_metric(run_id, f"gate/champion_{candidate.metric}", champion_value)
        client.set_tag(run_id, "gate.decision", reason)
    log.info("registered %s version %s: %s", name, version.version, reason)
    return Registration(name, int(version.version), candidate.metric, candidate.value, champion_value, promoted,
                        reason, run_id)


def _versions_holding(client, name: str, candidate: Candidate) -> list:
    """The versions of `name` that hold the candidate's weights (same DVC hash of its folder)."""
    model_hash = candidate.lineage.get("dvc.model", "")
    if not model_hash or not client.search_registered_models(filter_string=f"name = '{name}'"):
        return []
    return client.search_model_versions(f"name = '{name}' and tag.`dvc.model` = '{model_hash}'")


def _already_registered(versions: list, name: str, candidate: Candidate) -> Registration | None:
    """The registration of the newest gated version among `versions`, if any."""
    gated = [mv for mv in versions if "gate.decision" in mv.tags]  # a version without it was interrupted
    if not gated:
        return None
    v = max(gated, key=lambda mv: int(mv.version))
    return Registration(name, int(v.version), candidate.metric, candidate.value, None, False,
                        f"version {v.version} already holds these weights", v.run_id, skipped=True)


def _drop_interrupted(client, name: str, versions: list) -> None:
    """Delete the versions among `versions` that an earlier registration created but never gated
    (the tracking server went away in between), so registering again leaves one whole version."""
    for mv in versions:
        if "gate.decision" not in mv.tags:
            log.warning("%s version %s was left without a gate decision by an interrupted registration: deleted",
                        name, mv.version)
            client.delete_model_version(name, mv.version)


def registry_lock(uri: str, name: str):
    """An exclusive lock for registering `name` in the store at `uri`, shared by lmforge processes on
    this host (MLflow's registry has no transactions to make the gate atomic)."""
    from components.atomic import host_lock

    return host_lock("registry", f"{uri}|{name}")


def _create_registered_model(client, name: str, description: str) -> None:
    """Create `name` unless it exists; another process may create it at the same moment."""
    from mlflow.exceptions import MlflowException

    if client.search_registered_models(filter_string=f"name = '{name}'"):
        return
    try:
        client.create_registered_model(name, description=description)
    except MlflowException:
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            raise


def _gate(client, name, candidate: Candidate, champion, cfg: RegistryConfig, tracking, rescore):
    """(champion's value on the candidate's eval set, promote?, reason)."""
    if champion is None:
        return None, True, "first version: no champion yet"
    if champion.tags.get("eval_data") == candidate.eval_data_hash and "metric.value" in champion.tags:
        champion_value = float(champion.tags["metric.value"])
    elif rescore is not None:
        with tempfile.TemporaryDirectory() as tmp:
            champion_value = rescore(champion_model_dir(client, name, tracking, Path(tmp)))
    else:
        raise LmforgeError(f"{name}: the champion (version {champion.version}) was scored on other evaluation data "
                           "and no scorer was given to score it again")
    sign = 1.0 if candidate.higher_is_better else -1.0
    gain = sign * (candidate.value - champion_value)
    verdict = gain >= cfg.min_improvement
    reason = (f"{candidate.metric} {candidate.value:.4f} vs champion v{champion.version} {champion_value:.4f}: "
              f"{'+' if gain >= 0 else ''}{gain:.4f} {'>=' if verdict else '<'} min_improvement {cfg.min_improvement}")
    return champion_value, verdict, reason


def registration_summary(registrations: list[Registration]) -> list[dict]:
    return [asdict(r) for r in registrations]


# ------------------------------------------------------------------ candidates from the workspace


def _validation_hash(dataset_dir: Path) -> str:
    from components.versioning import tree_hash

    splits = sorted(p for p in dataset_dir.iterdir() if p.is_dir() and p.name.startswith("validation"))
    if not splits:
        raise LmforgeError(f"{dataset_dir}: no validation split to register a model against")
    return "-".join(tree_hash(p) for p in splits)


def _input_example(task: str, dataset_dir: Path, tokenizer_dir: Path):
    """A real row of the evaluation data, shaped as the served pipeline takes it."""
    from datasets import load_from_disk

    if task in ("fill-mask", "text-generation"):
        from transformers import AutoTokenizer

        text = load_from_disk(str(dataset_dir / "validation"))[0]["text"].split(".")[0].strip()
        if task == "text-generation":
            return " ".join(text.split()[:6])
        words = text.split()
        words[len(words) // 2] = AutoTokenizer.from_pretrained(str(tokenizer_dir)).mask_token
        return " ".join(words)
    split = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir() and p.name.startswith("validation"))[0]
    row = load_from_disk(str(dataset_dir / split))[0]
    if task == "question-answering":
        return {"question": row["question"], "context": row["context"]}
    if task == "token-classification":
        return " ".join(row["tokens"])
    return next(v for k, v in row.items() if isinstance(v, str) and k != "idx")


def workspace_candidates(params, names: list[str] | None = None) -> list[Candidate]:
    """Candidates for the configured models: each fine-tuned run, and the two pretrained models."""
    from components.tracking import parent_run
    from components.versioning import DvcProject, git_state, params_hash, tree_hash

    dvc = DvcProject(".")
    commit, dirty = git_state(".")
    raw = Path(params.ingest.out_dir)
    common = {"git.commit": commit, "git.dirty": str(dirty), "dvc.data": dvc.out_hash(params.ingest.out_dir) or "",
              "dvc.tokenizer": dvc.out_hash(params.tokenizer.out_dir) or "",
              "lineage.flow_run": parent_run.get() or ""}
    wanted = names if names is not None else (params.registry.models or [*params.finetune.runs, "bert-pretrained",
                                                                          "gpt-pretrained"])
    candidates = []
    for name in wanted:
        model_dir = Path(params.finetune.models_dir) / name
        if not model_dir.is_dir():
            raise LmforgeError(f"registry: model folder {model_dir} not found; run its stage first")
        if name in ("bert-pretrained", "gpt-pretrained"):
            cfg = params.pretrain.bert if name.startswith("bert") else params.pretrain.gpt
            metrics = _read_metrics(Path(cfg.metrics))
            dataset, metric, higher, section = raw / cfg.corpus, "val_perplexity", False, cfg.model_dump(mode="json")
            value, run_dir = metrics[metric], Path(cfg.run_dir)
        else:
            run = params.finetune.runs.get(name)
            if run is None:
                raise LmforgeError(f"registry.models: {name!r} is not a finetune run (known: {', '.join(params.finetune.runs)})")
            metrics = _read_metrics(Path(params.finetune.reports_dir) / f"{name}.json")
            metric, higher, value = metrics["main_metric"], True, validation_value(metrics)
            dataset = raw / (run.dataset or run.task)
            section = {**params.finetune.model_dump(mode="json", exclude={"runs"}), **run.model_dump(mode="json")}
            run_dir = Path("runs") / f"finetune-{name}"
        run_id_file = run_dir / "mlflow_run_id"
        lineage = {**common, "dvc.model": dvc.out_hash(model_dir) or tree_hash(model_dir),
                   "params.hash": params_hash(section),
                   "lineage.training_run": run_id_file.read_text().strip() if run_id_file.exists() else ""}
        task = pipeline_task(model_dir)
        candidates.append(Candidate(name, model_dir, metric, float(value), higher, _validation_hash(dataset),
                                    _input_example(task, dataset, model_dir), lineage))
    return candidates


def validation_value(metrics: dict) -> float:
    """The gate's number: the main metric, averaged over validation splits (MNLI has two)."""
    splits = [v for k, v in metrics.items() if k.startswith("validation") and isinstance(v, dict)]
    return sum(s[metrics["main_metric"]] for s in splits) / len(splits)


def _read_metrics(path: Path) -> dict:
    if not path.exists():
        raise LmforgeError(f"registry: metrics {path} not found; run the stage that writes it first")
    return json.loads(path.read_text())
