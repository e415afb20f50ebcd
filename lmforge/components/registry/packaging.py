"""What a registered version holds and where it comes back from: a pyfunc-servable model per
version (MLflow's transformers flavour, or lmforge's QA wrapper), and the HF folder of a version
downloaded again (to rescore a champion, or to fine-tune from `models:/<name>@<alias>`)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

from lmforge.components.config import TrackingConfig
from lmforge.components.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.components.registry.gate import Candidate

CANDIDATE, CHAMPION = "candidate", "champion"

# transformers' pipeline task for each head we export; the pyfunc model serves that pipeline.
PIPELINE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForTokenClassification": "token-classification",
    "ForPreTraining": "fill-mask",
    "ForMaskedLM": "fill-mask",
    "LMHeadModel": "text-generation",
    "ForConditionalGeneration": "text2text-generation",  # no such pipeline in transformers 5: our own pyfunc
}
def pipeline_task(model_dir: Path) -> str:
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    for suffix, task in PIPELINE_TASKS.items():
        if any(a.endswith(suffix) for a in architectures):
            return task
    raise LmforgeError(f"{model_dir}: cannot register architecture {architectures}; expected one of "
                       f"{', '.join('*' + s for s in PIPELINE_TASKS)}")


def pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference for this flavour imports torchvision, which we do not install.
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "transformers", "torch", "tokenizers", "safetensors")]


def save_qa_pyfunc(candidate: Candidate, out: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    import lmforge
    from lmforge.components.serving import QuestionAnsweringModel

    example = pd.DataFrame([candidate.input_example])
    mlflow.pyfunc.save_model(str(out), python_model=QuestionAnsweringModel(),
                             artifacts={"model": str(candidate.model_dir)},
                             code_paths=[str(Path(lmforge.__file__).parent)],  # the wrapper imports lmforge
                             signature=infer_signature(example, ["an answer"]), input_example=example,
                             pip_requirements=pip_requirements())


def save_seq2seq_pyfunc(candidate: Candidate, out: Path) -> None:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    import lmforge
    from lmforge.components.serving import Seq2SeqGenerationModel

    mlflow.pyfunc.save_model(str(out), python_model=Seq2SeqGenerationModel(),
                             artifacts={"model": str(candidate.model_dir)},
                             code_paths=[str(Path(lmforge.__file__).parent)],
                             signature=infer_signature([candidate.input_example], ["a text"]),
                             input_example=[candidate.input_example], pip_requirements=pip_requirements())


def save_pyfunc(candidate: Candidate, task: str, out: Path) -> None:
    if task == "question-answering":
        return save_qa_pyfunc(candidate, out)
    if task == "text2text-generation":
        return save_seq2seq_pyfunc(candidate, out)
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
                                       pip_requirements=pip_requirements(), model_card=card)


def version_by_alias(client, name: str, alias: str = CHAMPION):
    """The model version `name@alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_model_dir(client, name: str, tracking: TrackingConfig, dest: Path, alias: str = CHAMPION) -> Path:
    """The HF folder (weights + tokenizer) of `name@alias`, downloaded from the registry into `dest`."""
    import mlflow.artifacts

    version = version_by_alias(client, name, alias)
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

    from lmforge.components.atomic import atomic_dir

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
