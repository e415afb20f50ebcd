"""The promotion gate: a new version of a registered model, its lineage tags, and the aliases.

Every new version gets `candidate`. It takes `champion` only if its metric on the same evaluation
data beats the champion's by at least `min_improvement`, in the metric's own direction (higher
accuracy, lower bits per byte); the first version wins. "Same evaluation data" is checked, not
assumed: when the data (or the metric) changed since the champion was scored, the champion is
scored again on today's data by the candidate's scorer before the two are compared. The decision,
both values, whether the champion was rescored and the data's hash are tagged on the version.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.components.config import RegistryConfig, TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.registry.packaging import (CANDIDATE, CHAMPION, champion_model_dir, pipeline_task, save_pyfunc,
                                           version_by_alias)
from lmforge.components.tracking import client_run, tracking_client

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A model folder about to be registered, with the number the gate compares."""

    name: str                   # run name, e.g. bert-sst2
    model_dir: Path
    metric: str                 # e.g. accuracy, f1, masked_word_accuracy, bits_per_byte
    value: float
    higher_is_better: bool
    eval_data_hash: str         # what `value` was measured on
    input_example: object
    lineage: dict[str, str]     # git commit, DVC hashes, params hash, training run
    labels: dict[str, str] = field(default_factory=dict)  # task, model, init: the register run's tags


@dataclass
class Registration:
    """What registering a candidate did: the registration stage's receipt."""

    model: str                  # the registered model, e.g. lmforge-bert-sst2
    version: int
    metric: str
    value: float
    champion_value: float | None
    promoted: bool
    reason: str
    run_id: str
    skipped: bool = False       # these weights were registered before: nothing new
    higher_is_better: bool = True
    eval_data: str = ""
    champion_version: int | None = None
    champion_rescored: bool = False


@dataclass
class Verdict:
    champion_version: int | None
    champion_value: float | None
    champion_rescored: bool
    promoted: bool
    reason: str


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
    with client_run(tracking, f"register-{candidate.name}", stage="register",
                    **candidate.labels) as (client, run_id):
        with tempfile.TemporaryDirectory() as tmp:
            save_pyfunc(candidate, task, Path(tmp) / "model")
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

            verdict = _gate(client, name, candidate, version_by_alias(client, name), cfg, tracking, rescore)
            if verdict.promoted:
                client.set_registered_model_alias(name, CHAMPION, version.version)
            for key, value in {"gate.decision": CHAMPION if verdict.promoted else CANDIDATE, "gate.reason": verdict.reason,
                               "gate.eval_data": candidate.eval_data_hash,
                               "gate.champion_version": _text(verdict.champion_version),
                               "gate.champion_value": _text(verdict.champion_value),
                               "gate.champion_rescored": str(verdict.champion_rescored)}.items():
                client.set_model_version_tag(name, version.version, key, value)
        client.log_param(run_id, "registered_model", f"{name}/{version.version}")
        client.log_metric(run_id, f"gate/candidate_{candidate.metric}", candidate.value)
        if verdict.champion_value is not None:
            client.log_metric(run_id, f"gate/champion_{candidate.metric}", verdict.champion_value)
        client.set_tag(run_id, "gate.decision", verdict.reason)
    log.info("registered %s version %s: %s", name, version.version, verdict.reason)
    return Registration(name, int(version.version), candidate.metric, candidate.value, verdict.champion_value,
                        verdict.promoted, verdict.reason, run_id, higher_is_better=candidate.higher_is_better,
                        eval_data=candidate.eval_data_hash, champion_version=verdict.champion_version,
                        champion_rescored=verdict.champion_rescored)


def _text(value) -> str:
    return "" if value is None else str(value)


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
    return Registration(name, int(v.version), v.tags.get("metric.name", candidate.metric),
                        float(v.tags.get("metric.value", candidate.value)), None, False,
                        f"version {v.version} already holds these weights", v.run_id, skipped=True,
                        higher_is_better=candidate.higher_is_better, eval_data=v.tags.get("eval_data", ""))


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
    from lmforge.components.atomic import host_lock

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


def _gate(client, name: str, candidate: Candidate, champion, cfg: RegistryConfig, tracking: TrackingConfig,
          rescore: Callable[[Path], float] | None) -> Verdict:
    """Compare the candidate with the champion on the candidate's evaluation data."""
    if champion is None:
        return Verdict(None, None, False, True, "first version: no champion yet")
    same_data = (champion.tags.get("eval_data") == candidate.eval_data_hash
                 and champion.tags.get("metric.name") == candidate.metric and "metric.value" in champion.tags)
    if same_data:
        champion_value = float(champion.tags["metric.value"])
    elif rescore is not None:
        with tempfile.TemporaryDirectory() as tmp:
            champion_value = rescore(champion_model_dir(client, name, tracking, Path(tmp)))
        log.info("%s: champion v%s rescored on today's evaluation data (%s): %s %.4f", name, champion.version,
                 candidate.eval_data_hash, candidate.metric, champion_value)
    else:
        raise LmforgeError(f"{name}: the champion (version {champion.version}) was scored on other evaluation data "
                           "and no scorer was given to score it again")
    sign = 1.0 if candidate.higher_is_better else -1.0
    gain = sign * (candidate.value - champion_value)  # > 0: the candidate is better, whichever way is better
    promoted = gain >= cfg.min_improvement
    rescored = "" if same_data else " (rescored on today's data)"
    reason = (f"{candidate.metric} {candidate.value:.4f} vs champion v{champion.version} {champion_value:.4f}"
              f"{rescored}: {'better' if gain > 0 else 'worse' if gain < 0 else 'equal'} by {abs(gain):.4f}, "
              f"{'>=' if promoted else '<'} min_improvement {cfg.min_improvement}")
    return Verdict(int(champion.version), champion_value, not same_data, promoted, reason)
