"""Typed parameters: the pydantic schema of params.yaml, one section per stage, and its defaults.

The defaults here are the one home of every default value: params.yaml spells the same values out
for users to read and edit (tests/test_config.py checks the two agree). Reading, overriding and
writing the file is params_file.py's job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmforge.components.data.tasks import TASKS
from lmforge.components.errors import LmforgeError


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------- ingest


class DemoConfig(Section):
    """The built-in, seeded demo world: a pretraining corpus and tasks that need its facts."""

    enabled: bool = Field(True, description="generate the built-in demo datasets")
    seed: int = 0
    # 40 people: few enough that a tiny BERT learns their facts in a few CPU minutes.
    entities: int = Field(40, ge=20, description="people in the fictional world; places and orgs scale with it")
    corpus_documents: int = Field(2000, ge=10, description="documents in the pretraining corpus")
    chinese: float = Field(0.5, ge=0, le=0.9, description="share of the corpus telling the world in Chinese (at 0.25, zero-shot "
                                                          "transfer stayed at chance; at 0.5 it reached 0.55-0.79, measured); "
                                                           "> 0 also writes sst2_zh, rte_zh, qnli_zh, dictionary_en_zh")
    glue_train: int = Field(400, ge=10, description="train rows per GLUE task")
    glue_eval: int = Field(120, ge=10, description="validation and test rows per GLUE task")
    # Zero-shot transfer sits ~0.06-0.1 above the majority class here. At 120 rows a seed's score moved
    # up to 0.07 with the draw of the examples alone; at 500 the margin's 95% interval was +-0.057 (per-row
    # SD 0.65, measured), so an 0.06 lead is clear of 0 four times in five only from ~900 rows.
    chinese_eval: int = Field(1000, ge=10, description="validation and test rows per Chinese task (sst2_zh, rte_zh, "
                                                       "qnli_zh), where the cross-lingual report scores")
    qa_train: int = Field(400, ge=10, description="train questions for squad and squad_v2")
    qa_eval: int = Field(120, ge=10, description="validation questions for squad and squad_v2")
    ner_train: int = Field(400, ge=10, description="train sentences for conll2003")
    ner_eval: int = Field(120, ge=10, description="validation and test sentences for conll2003")


LocalFormat = Literal["text", "csv", "tsv", "json", "jsonl", "parquet", "glue_tsv", "squad_json", "conll"]


class SourceConfig(Section):
    """One dataset to ingest into data/raw/<name>."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str = Field(description="'hf:<dataset>[:<config>]' or 'local'")
    format: LocalFormat | None = Field(None, description="local files only")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="local: a path or glob, a list of them, or {split: path}; glue_tsv: the task folder"
    )
    task: Literal[TASKS] | None = Field(None, description="validate against (and map to) this task's schema")
    text_unit: Literal["document", "paragraph", "line"] = Field(
        "document", description="plain text: a row per file, per blank-line-separated block, or per line"
    )
    revision: str | None = Field(None, description="Hub datasets: a git revision to pin")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v != "local" and not re.fullmatch(r"hf:[^:\s]+(:[^:\s]+)?", v):
            raise ValueError(f"expected 'local' or 'hf:<dataset>[:<config>]', got {v!r}")
        return v

    @model_validator(mode="after")
    def _local_needs_files(self) -> SourceConfig:
        if self.source == "local" and (self.format is None or self.data_files is None):
            raise ValueError("a local source needs both 'format' and 'data_files'")
        if self.format == "glue_tsv" and self.task not in (None, *_GLUE_NAMES):
            raise ValueError(f"format glue_tsv needs a GLUE task, got task {self.task!r}")
        return self


_GLUE_NAMES = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


class HoldoutConfig(Section):
    """The validation split carved from train for a dataset that has none (by document, seeded)."""

    fraction: float = Field(0.05, gt=0, le=0.5, description="share of train documents held out")
    seed: int = Field(0, description="which documents: each goes by a hash of (seed, document)")


class IngestConfig(Section):
    out_dir: str = "data/raw"
    demo: DemoConfig = Field(default_factory=DemoConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    validation: HoldoutConfig = Field(default_factory=HoldoutConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> IngestConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique, repeated: {', '.join(dupes)}")
        return self


# ------------------------------------------------------------------------------------- tokenizer


class BertTokenizerConfig(Section):
    vocab_size: int = Field(3000, ge=100, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    strip_accents: bool | None = Field(None, description="None: strip when lowercasing, as BERT does")
    model_max_length: int = Field(512, ge=8)


class GptTokenizerConfig(Section):
    # Byte-level BPE starts from 256 byte symbols plus the end-of-text token.
    vocab_size: int = Field(3000, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    model_max_length: int = Field(1024, ge=8)


class TokenizerConfig(Section):
    corpus: str = Field("corpus", description="the ingested dataset (a folder in ingest.out_dir) to train on")
    text_column: str = "text"
    out_dir: str = "data/tokenizers"
    metrics: str = "reports/metrics/tokenizer.json"
    bert: BertTokenizerConfig = Field(default_factory=BertTokenizerConfig)
    gpt: GptTokenizerConfig = Field(default_factory=GptTokenizerConfig)


# ------------------------------------------------------------------------------------- training

# (layers, hidden, heads) as Google's BERT miniatures name them; intermediate = 4 * hidden.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "base": (12, 768, 12),
}


class ModelConfig(Section):
    """A size preset; any of layers/hidden/heads/intermediate set here overrides it."""

    preset: Literal["tiny", "mini", "small", "base"] = "tiny"
    num_layers: int | None = Field(None, ge=1, le=96)
    hidden_size: int | None = Field(None, ge=8, le=16384)
    num_heads: int | None = Field(None, ge=1, le=256)
    intermediate_size: int | None = Field(None, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_position_embeddings: int = Field(512, ge=8, le=65536)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """(layers, hidden, heads, intermediate) after overrides."""
        layers, hidden, heads = MODEL_PRESETS[self.preset]
        layers, hidden, heads = self.num_layers or layers, self.hidden_size or hidden, self.num_heads or heads
        return layers, hidden, heads, self.intermediate_size or 4 * hidden

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        _, hidden, heads, _ = self.sizes
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} must be divisible by num_heads {heads}")
        return self


class TrainConfig(Section):
    """What Lightning needs to train; the same keys for pretraining and fine-tuning."""

    seed: int = 0
    batch_size: int = Field(32, ge=1, description="per device: a step sees batch_size x devices x num_nodes x "
                                                   "accumulate_grad_batches examples")
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW's; never on biases and LayerNorm weights")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2)")
    adam_epsilon: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_steps: int = Field(600, ge=-1, description="-1: run max_epochs instead")
    max_epochs: int | None = Field(None, ge=1)
    gradient_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    accumulate_grad_batches: int = Field(1, ge=1)
    val_every_n_steps: int = Field(100, ge=1)
    limit_val_batches: int = Field(20, ge=1)
    checkpoint_every_n_steps: int = Field(50, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32"
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = Field("auto", description="auto, ddp, fsdp, deepspeed, ... as Lightning names them")
    num_nodes: int = Field(1, ge=1)
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(True, description="deterministic algorithms (Lightning's deterministic=True)")
    num_workers: int = Field(0, ge=0)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v):
        return str(v) if isinstance(v, int) else v  # `-S ...precision=32` reads as the number 32

    @model_validator(mode="after")
    def _some_stop(self) -> TrainConfig:
        if self.max_steps == -1 and self.max_epochs is None:
            raise ValueError("set max_steps > 0 or max_epochs")
        if self.max_steps == 0:
            raise ValueError("max_steps must be > 0, or -1 to use max_epochs")
        return self


class MaskingConfig(Section):
    """BERT's masked LM: which tokens are chosen, and what a chosen token becomes."""

    mlm_probability: float = Field(0.15, gt=0, lt=1)
    mask_token: float = Field(0.8, ge=0, le=1, description="share of chosen tokens replaced by [MASK]")
    random_token: float = Field(0.1, ge=0, le=1, description="share replaced by a random token")
    keep: float = Field(0.1, ge=0, le=1, description="share left unchanged")
    whole_word: bool = False

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> MaskingConfig:
        total = self.mask_token + self.random_token + self.keep
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"mask_token + random_token + keep must sum to 1, got {self.mask_token} + "
                f"{self.random_token} + {self.keep} = {total:g}"
            )
        return self


class CorpusInput(Section):
    corpus: str = Field("corpus", description="the ingested dataset (a folder in ingest.out_dir)")
    text_column: str = "text"
    num_proc: int = Field(1, ge=1, description="processes for datasets.map tokenization")


class BertPretrainConfig(CorpusInput):
    tokenizer: str = "data/tokenizers/bert"
    out_dir: str = "models/bert-pretrained"
    run_dir: str = Field("runs/pretrain-bert", description="checkpoints (last.ckpt) for resuming")
    metrics: str = "reports/metrics/pretrain_bert.json"
    plot: str = "reports/plots/pretrain_bert_loss.png"
    objective: Literal["nsp", "sop", "none"] = "sop"
    max_seq_length: int = Field(128, ge=16)
    short_seq_prob: float = Field(0.1, ge=0, le=1, description="share of examples cut shorter, as BERT does")
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    snapshot_steps: list[int] = Field(default_factory=lambda: [0, 50, 150, 250, 400], description="steps at which the model is also exported "
                                      "to snapshots_dir/step-<N> (0: before training): the when-BERT-learns report")
    snapshots_dir: str = "models/bert-snapshots"
    # Masked LM learns from 15% of the tokens: it needs more steps than GPT to learn the facts.
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=400, learning_rate=2e-3,
                                                                   adam_betas=(0.9, 0.98), adam_epsilon=1e-6))

    @model_validator(mode="after")
    def _fits_positions(self) -> BertPretrainConfig:
        if self.max_seq_length > self.model.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} exceeds model.max_position_embeddings "
                f"{self.model.max_position_embeddings}"
            )
        if any(s < 0 for s in self.snapshot_steps) or len(set(self.snapshot_steps)) != len(self.snapshot_steps):
            raise ValueError(f"snapshot_steps {self.snapshot_steps}: expected distinct steps >= 0")
        if self.snapshot_steps and self.train.strategy in ("fsdp", "deepspeed"):
            raise ValueError(f"snapshot_steps with train.strategy {self.train.strategy}: a snapshot is one process's "
                             "whole model; use ddp, or no snapshots")
        return self


class GptPretrainConfig(CorpusInput):
    tokenizer: str = "data/tokenizers/gpt"
    out_dir: str = "models/gpt-pretrained"
    run_dir: str = "runs/pretrain-gpt"
    metrics: str = "reports/metrics/pretrain_gpt.json"
    plot: str = "reports/plots/pretrain_gpt_loss.png"
    block_size: int = Field(128, ge=8)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=120, learning_rate=2e-3,
                                                                   adam_betas=(0.9, 0.98), adam_epsilon=1e-6))

    @model_validator(mode="after")
    def _fits_positions(self) -> GptPretrainConfig:
        if self.block_size > self.model.max_position_embeddings:
            raise ValueError(
                f"block_size {self.block_size} exceeds model.max_position_embeddings {self.model.max_position_embeddings}"
            )
        return self


CORRUPTIONS = ("mask", "delete", "infill", "permute", "rotate")


class CorruptionMix(Section):
    """BART's corruptions, weighted: each example gets one, drawn in proportion to these weights."""

    mask: float = Field(0.0, ge=0, description="token masking: tokens replaced by <mask>")
    delete: float = Field(0.0, ge=0, description="token deletion")
    infill: float = Field(1.0, ge=0, description="text infilling: spans replaced by one <mask> each")
    permute: float = Field(1.0, ge=0, description="sentence permutation")
    rotate: float = Field(0.0, ge=0, description="document rotation: the text starts at a random token")

    @model_validator(mode="after")
    def _some_weight(self) -> CorruptionMix:
        if sum(getattr(self, name) for name in CORRUPTIONS) <= 0:
            raise ValueError(f"the weights of {', '.join(CORRUPTIONS)} sum to 0; give at least one a weight > 0")
        return self


class CorruptionConfig(Section):
    """How the encoder's input is corrupted; the decoder always restores the original text."""

    mix: CorruptionMix = Field(default_factory=CorruptionMix)
    mask_rate: float = Field(0.3, gt=0, lt=1, description="token masking: share of tokens replaced by <mask>")
    delete_rate: float = Field(0.3, gt=0, lt=1, description="token deletion: share of tokens deleted")
    infill_rate: float = Field(0.3, gt=0, lt=1, description="text infilling: share of tokens inside masked spans")
    span_lambda: float = Field(3.0, gt=0, le=64, description="text infilling: span lengths ~ Poisson(lambda)")


class Seq2SeqPretrainConfig(CorpusInput):
    """BART-style denoising: an encoder reads a corrupted document, a decoder writes the original."""

    tokenizer: str = Field("data/tokenizers/gpt", description="a byte-level BPE; BART's <s> </s> <pad> <mask> "
                                                              "are added in the exported model's own copy")
    out_dir: str = "models/seq2seq-pretrained"
    run_dir: str = "runs/pretrain-seq2seq"
    metrics: str = "reports/metrics/pretrain_seq2seq.json"
    plot: str = "reports/plots/pretrain_seq2seq_loss.png"
    max_seq_length: int = Field(128, ge=16, description="tokens per document chunk, <s> and </s> included")
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    # Batches of 16 whole demo documents: 150 steps in about half a minute on two CPU cores.
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=150, batch_size=16, learning_rate=2e-3,
                                                                   adam_betas=(0.9, 0.98), adam_epsilon=1e-6,
                                                                   warmup_steps=20))

    @model_validator(mode="after")
    def _fits_positions(self) -> Seq2SeqPretrainConfig:
        if self.max_seq_length > self.model.max_position_embeddings:
            raise ValueError(f"max_seq_length {self.max_seq_length} exceeds model.max_position_embeddings "
                             f"{self.model.max_position_embeddings}")
        return self


class Seq2SeqAblationConfig(Section):
    """`lmforge stage seq2seq-ablation`: each corruption alone, pretrained briefly from the same weights
    (corpus, tokenizer, model, rates and optimizer from pretrain.seq2seq), then scored on restoring
    held-out documents (under its own corruption, and under every one) and on closed-book QA after a
    short fine-tune; beside those starting weights."""

    enabled: bool = Field(True, description="false: the stage writes a report saying it did not run (a pipeline "
                                            "without the demo world's questions or a qa_dataset)")
    corruptions: list[Literal[CORRUPTIONS]] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    pretrain_steps: int = Field(30, ge=1, description="pretraining steps per corruption")
    # A tiny BART learns the demo corpus as a language model long before it looks at its input (on the
    # corpus, reading began only near 600 steps, measured); on rows of random tokens there is nothing
    # to learn but copying, and it copied 99 % of them by step 200. So every row starts from the same
    # copy-trained weights, and the corruptions differ in what they add to a model that reads.
    copy_warmup_steps: int = Field(200, ge=0, description="steps of copying rows of random tokens before any "
                                                          "corruption, the same weights for every row; 0: from "
                                                          "random weights")
    # Runs this short learn more at a higher rate than pretrain.seq2seq's (measured: 5e-3 against 2e-3).
    pretrain_learning_rate: float = Field(5e-3, gt=0, le=1.0)
    finetune_steps: int = Field(30, ge=1, description="closed-book QA fine-tuning steps per model")
    finetune_batch_size: int = Field(32, ge=1)
    finetune_learning_rate: float = Field(3e-3, gt=0, le=1.0)
    qa_dataset: str | None = Field(None, description="an ingested dataset with question and answer columns (train "
                                                     "and validation); empty: the demo world's questions")
    heldout_documents: int = Field(32, ge=1, description="held-out corpus chunks restored")
    max_new_tokens: int = Field(16, ge=1, le=512, description="QA: longest generated answer")
    out: str = "reports/seq2seq_corruptions.json"
    plot: str = "reports/seq2seq_corruptions.png"


class PretrainConfig(Section):
    bert: BertPretrainConfig = Field(default_factory=BertPretrainConfig)
    gpt: GptPretrainConfig = Field(default_factory=GptPretrainConfig)
    seq2seq: Seq2SeqPretrainConfig = Field(default_factory=Seq2SeqPretrainConfig)

    def model_dir(self, model: str) -> Path:
        """Where pretrain.<model> exports its model: its out_dir, the one definition every consumer
        (fine-tuning, prompting, generate, the reports, the registry) reads the pretrained model from."""
        if model not in type(self).model_fields:
            raise LmforgeError(f"no pretrained model {model!r}: expected one of {', '.join(type(self).model_fields)}")
        return Path(getattr(self, model).out_dir)


QA_TASKS = ("squad", "squad_v2")
TAGGING_TASKS = ("conll2003",)
FINETUNE_TASKS = (*_GLUE_NAMES, *QA_TASKS, *TAGGING_TASKS)


class FinetuneRun(Section):
    """One fine-tuning run: a task, a model family and where its weights start."""

    task: Literal[FINETUNE_TASKS] = "sst2"
    model: Literal["bert", "gpt"] = "bert"
    init: str = Field(
        "pretrained",
        description="pretrained (the model pretrain.<model>.out_dir holds), scratch (its architecture and "
        "tokenizer, random weights), or the path of a local Hugging Face checkpoint folder",
    )
    dataset: str | None = Field(None, description="the ingested dataset; default: the task's name")
    seed: int | None = Field(None, ge=0, description="this run's training seed (default: finetune.train.seed); "
                                                   "runs differing only in seed measure the noise of a comparison")
    aux_lm_weight: float = Field(0.0, ge=0, description="gpt: λ of the language-modelling loss kept as an auxiliary "
                                                        "objective while fine-tuning the head (GPT-1 used 0.5)")

    @model_validator(mode="after")
    def _gpt_classifies_only(self) -> FinetuneRun:
        if self.model == "gpt" and self.task not in _GLUE_NAMES:
            raise ValueError(f"task {self.task!r} needs model bert; gpt fine-tunes GLUE tasks (a classification head)")
        if self.aux_lm_weight and self.model != "gpt":
            raise ValueError(f"aux_lm_weight {self.aux_lm_weight:g}: the auxiliary LM loss is GPT's (model gpt), "
                             f"not {self.model}'s")
        return self

    @property
    def name(self) -> str:
        """models/<name>, reports/metrics/<name>.json: e.g. bert-sst2, bert-scratch-sst2, bert-qnli-seed1,
        gpt-sst2-auxlm0p5 (λ with p for the point: a DVC param key cannot hold a dot)."""
        init = "" if self.init == "pretrained" else f"-{self.init}" if self.init == "scratch" else f"-{Path(self.init).name}"
        aux = f"-auxlm{self.aux_lm_weight:g}".replace(".", "p") if self.aux_lm_weight else ""
        seed = "" if self.seed is None else f"-seed{self.seed}"
        return f"{self.model}{init}-{self.task}{aux}{seed}"

    def init_dir(self, pretrain: PretrainConfig) -> Path:
        """The HF folder the run starts from: pretrain.<model>.out_dir for pretrained and scratch
        (scratch takes its config and tokenizer), else the folder `init` names."""
        return pretrain.model_dir(self.model) if self.init in ("pretrained", "scratch") else Path(self.init)


def demo_finetune_runs() -> dict[str, FinetuneRun]:
    """The demo's fine-tuning: each task family once, and what pretraining buys on three tasks, each
    side twice (seeds 0 and 1) so the report can tell a difference from the noise."""
    runs = [FinetuneRun(task="sst2"), FinetuneRun(task="stsb"), FinetuneRun(task="squad_v2"),
            FinetuneRun(task="sst2", model="gpt"),
            FinetuneRun(task="sst2", model="gpt", aux_lm_weight=0.5)]  # GPT-1's L2 + 0.5 L1
    runs += [FinetuneRun(task=task, init=init, seed=seed)
             for task in ("qnli", "squad", "conll2003") for init in ("pretrained", "scratch") for seed in (None, 1)]
    return {run.name: run for run in runs}


class FinetuneConfig(FinetuneRun):
    """`lmforge stage finetune` runs the task/model/init/seed at the top, or the run of `runs` named
    by `run` (what dvc.yaml's finetune stages pass); `runs` lists what dvc repro runs."""

    runs: dict[str, FinetuneRun] = Field(
        default_factory=demo_finetune_runs, description="what `dvc repro` fine-tunes: {name: run}, the name as "
                                                        "models/<name>"
    )
    run: str | None = Field(None, description="a name in runs: fine-tune that run instead of task/model/init/seed")
    models_dir: str = "models"
    runs_dir: str = Field("runs", description="<runs_dir>/finetune-<name>: a run's checkpoints and its run record")
    reports_dir: str = "reports/metrics"
    predictions_dir: str = "reports/predictions"
    max_seq_length: int = Field(128, ge=16, le=4096)
    doc_stride: int = Field(32, ge=1, description="QA: overlap between windows of a long context")
    max_answer_length: int = Field(30, ge=1)
    n_best: int = Field(20, ge=1)
    null_score_threshold: float = Field(0.0, description="squad_v2: predict no answer when null - best > this")
    patience: int = Field(5, ge=1, description="early stopping: validations without improvement")
    freeze_embeddings: bool = Field(False, description="keep the token embeddings as pretrained (helps zero-shot "
                                                       "transfer to a language the fine-tuning never saw)")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(max_steps=-1, max_epochs=5, learning_rate=1e-3, warmup_steps=20,
                                            val_every_n_steps=50, checkpoint_every_n_steps=50)
    )

    @model_validator(mode="after")
    def _names_match(self) -> FinetuneConfig:
        for key, run in self.runs.items():
            if key != run.name:
                raise ValueError(f"runs.{key}: a run of {run.model} on {run.task} from {run.init} is named {run.name!r}")
        if self.run is not None and self.run not in self.runs:
            raise ValueError(f"run {self.run!r} is not in finetune.runs (known: {', '.join(self.runs) or 'none'})")
        return self

    def run_dir(self, name: str) -> Path:
        """The training folder of the run `name`: checkpoints, and the record of its MLflow run
        (training/run_record.py) that registration reads."""
        return Path(self.runs_dir) / f"finetune-{name}"

    def selected(self) -> FinetuneRun:
        """The run `lmforge stage finetune` trains: runs[run], or the task/model/init/seed at the top."""
        if self.run is not None:
            return self.runs[self.run]
        return FinetuneRun(task=self.task, model=self.model, init=self.init, dataset=self.dataset, seed=self.seed,
                           aux_lm_weight=self.aux_lm_weight)

    def check_qa_windows(self) -> None:
        """QA's windows overlap by doc_stride: checked where a QA task runs, not for every task,
        so a short max_seq_length for SST-2 does not trip over a QA-only setting."""
        if self.doc_stride >= self.max_seq_length // 2:
            raise LmforgeError(f"finetune.doc_stride {self.doc_stride} must be below half of finetune.max_seq_length "
                               f"{self.max_seq_length} for QA windows")


class PromptRun(Section):
    """GPT classifying a GLUE-schema task from a prompt, no training: zero-shot or k-shot in context."""

    task: Literal[_GLUE_NAMES] = "sst2"
    shots: int = Field(0, ge=0, le=32, description="labelled examples from train put in the prompt (0: zero-shot)")
    init: str = Field("pretrained", description="pretrained (the model pretrain.gpt.out_dir holds) or a local HF "
                                                "causal-LM folder")
    dataset: str | None = Field(None, description="the ingested dataset; default: the task's name")

    @property
    def name(self) -> str:
        """reports/metrics/<name>.json: e.g. gpt-0shot-sst2, gpt-4shot-rte."""
        init = "" if self.init == "pretrained" else f"-{Path(self.init).name}"
        return f"gpt{init}-{self.shots}shot-{self.task}"

    def init_dir(self, pretrain: PretrainConfig) -> Path:
        """The causal LM prompted: pretrain.gpt.out_dir, or the folder `init` names."""
        return pretrain.model_dir("gpt") if self.init == "pretrained" else Path(self.init)


def demo_prompt_runs() -> dict[str, PromptRun]:
    """The demo's prompting: SST-2 zero-shot and 4-shot."""
    return {run.name: run for run in (PromptRun(task="sst2", shots=0), PromptRun(task="sst2", shots=4))}


class PromptConfig(PromptRun):
    """`lmforge stage prompt` runs the task/shots at the top; `runs` lists what dvc repro runs."""

    runs: dict[str, PromptRun] = Field(default_factory=demo_prompt_runs,
                                       description="{name: run}, the name as gpt-<k>shot-<task>")
    verbalizers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="task -> one word per label, in label order; tasks not listed use lmforge's defaults",
    )
    max_eval_examples: int = Field(200, ge=1, description="validation rows scored per split")
    # The demo's GPT saw blocks of pretrain.gpt.block_size (128) tokens: longer prompts drop shots instead.
    max_positions: int | None = Field(
        128, ge=16, description="cap on prompt length in tokens, label word included (never more than the model "
                                "has); empty: the model's positions"
    )
    seed: int = Field(0, description="which train rows become the k shots")
    reports_dir: str = "reports/metrics"
    predictions_dir: str = "reports/predictions"
    # free text generation from a prompt (`lmforge generate` and the prompt stage's samples)
    generate_prompts: list[str] = Field(
        default_factory=lambda: ["After school, she studied", "The Debel Bank is located in"],
        description="prompts whose continuations are reported (the defaults: about the demo world)")
    max_new_tokens: int = Field(40, ge=1, le=2048)
    temperature: float = Field(0.8, ge=0.0, description="0: greedy")
    top_k: int = Field(50, ge=0)

    @model_validator(mode="after")
    def _names_match(self) -> PromptConfig:
        for key, run in self.runs.items():
            if key != run.name:
                raise ValueError(f"runs.{key}: a {run.shots}-shot run on {run.task} is named {run.name!r}")
        return self


class CrosslingualConfig(Section):
    """`lmforge stage crosslingual`: the multilingual BERT fine-tuned on a task in one language and
    scored on the same task in another (zero-shot), beside fine-tuning in that language, the same
    recipe from random weights and the majority class; and the language vector (mean target-language
    minus mean source-language embedding over the corpus) as word-translation retrieval."""

    enabled: bool = Field(True, description="false: the stage writes a report saying it did not run (a "
                                            "pipeline without a task in two languages)")
    task: Literal[_GLUE_NAMES] = "qnli"
    source: str = Field("qnli", description="the task's dataset in the language fine-tuned on")
    target: str = Field("qnli_zh", description="the same task's dataset in the other language, scored zero-shot")
    model: str | None = Field(None, description="the multilingual BERT (an HF folder); empty: pretrain.bert.out_dir. "
                                                "dvc.yaml tracks pretrain.bert.out_dir, not another folder named here")
    corpus: str = Field("corpus", description="a dataset in ingest.out_dir with documents in both languages")
    text_column: str = "text"
    dictionary: str = Field("dictionary_en_zh", description="a dataset with columns source, target "
                            "(a word and its translation); '' for no retrieval part")
    documents_per_language: int = Field(300, ge=10, description="sentences averaged for each language's mean")
    contexts_per_word: int = Field(10, ge=1, description="corpus sentences a word's embedding is averaged over")
    seeds: list[int] = Field([0, 1], min_length=1, description="fine-tuning seeds of the zero-shot and random-weights rows: "
                             "each row's score is their mean, with every seed's score beside it (the fine-tuned-on-"
                             "target row, the ceiling, uses the first)")
    freeze_embeddings: bool = Field(True, description="fine-tune with the token embeddings frozen, so the target "
                                                      "language's stay where pretraining put them (Wu & Dredze 2019)")
    layer: int | None = Field(None, description="the hidden layer compared (0: embeddings, -1: the last); "
                                                "default: the middle one")
    run_dir: str = "runs/crosslingual"
    out: str = "reports/crosslingual.json"
    plot: str = "reports/crosslingual.png"


class WhenBertLearnsConfig(Section):
    """`lmforge stage when-bert-learns`: every snapshot of pretrain.bert.snapshot_steps scored by
    held-out masked-word accuracy, a linear probe, a fine-tuned score and the sense separation."""

    enabled: bool = Field(True, description="false: the stage writes a report saying it did not run")
    probe_task: Literal[_GLUE_NAMES] = Field("sst2", description="the linear probe's task (frozen encoder)")
    finetune_task: Literal[_GLUE_NAMES] = Field("qnli", description="fine-tuned from each snapshot (finetune.train)")
    max_epochs: int | None = Field(2, ge=1, description="epochs of each snapshot's fine-tuning (empty: "
                                                        "finetune.train.max_epochs): one score per snapshot, not the best")
    heldout_documents: int = Field(200, ge=1, description="held-out corpus documents for masked-word accuracy")
    run_dir: str = "runs/when-bert-learns"
    out: str = "reports/when_bert_learns.json"
    plot: str = "reports/when_bert_learns.png"


class EvaluateConfig(Section):
    """`lmforge stage evaluate`: score a fine-tuned model on a split without training; and the reports."""

    model: str = Field("bert-sst2", description="a folder under models_dir, or the path of a fine-tuned HF folder")
    dataset: str | None = Field(None, description="the ingested dataset; default: the model's task")
    split: str | None = Field(None, description="default: the task's validation split(s)")
    models_dir: str = "models"
    out_dir: str = Field("reports/eval", description="<out_dir>/<model>/metrics.json and plots")
    # "Why BERT works": one word in sentences of different senses; its contextual embeddings compared
    why_bert_word: str = "bank"
    why_bert_sentences: list[str] = Field(
        default_factory=list, description="sentences using why_bert_word, the first half in one sense, the rest in "
        "another; empty: the demo world's 18 + 18 for 'bank', the word at the same positions in both senses")

    @field_validator("why_bert_sentences")
    @classmethod
    def _two_or_none(cls, v: list[str]) -> list[str]:
        if len(v) == 1:
            raise ValueError("one sentence has nothing to be compared with; give two or more, or none for the demo's")
        return v

    def sense_sentences(self) -> list[str]:
        """The why-BERT sentences: the configured ones, else the demo world's for 'bank'."""
        if self.why_bert_sentences:
            return self.why_bert_sentences
        if self.why_bert_word.lower() != "bank":
            raise LmforgeError(f"evaluate.why_bert_sentences: none given for why_bert_word {self.why_bert_word!r}; "
                               "the built-in sentences are for 'bank': list sentences of two senses")
        from lmforge.components.data.world import sense_sentences

        return sense_sentences()
    reports_dir: str = Field("reports", description="why_bert.{json,png}, pretrained_vs_scratch.{json,md,png}")


class RegistryConfig(Section):
    """MLflow model registry: the `register` stage, and the gate a new version passes to become champion."""

    enabled: bool = True
    prefix: str = Field("lmforge-", description="registered model name: <prefix><model>, e.g. lmforge-bert-sst2")
    model: str = Field("bert-pretrained", description="what `lmforge stage register` registers: a finetune run's "
                                                      "name, or bert-pretrained / gpt-pretrained")
    receipts_dir: str = Field("reports/registry", description="<model>.json: version, aliases, the gate's decision")
    min_improvement: float = Field(
        0.0, description="a candidate becomes champion if it beats the champion by at least this, in the metric's "
                         "own direction (higher accuracy, lower bits per byte)"
    )
    heldout_documents: int = Field(1000, ge=1, description="pretrained models: held-out documents scored for the gate")
    seed: int = Field(0, description="pretrained BERT: which words of the held-out documents are masked for the gate")


class OrchestrationConfig(Section):
    """Prefect: where flows are served, the retraining schedule, retries of transient faults."""

    prefect_api_url: str = Field("http://127.0.0.1:4200/api", description="the Prefect server `lmforge serve` uses or starts")
    retrain_cron: str = Field("0 3 * * 1", description="when the retrain deployment runs (cron, server time zone)")
    retrain_schedule_active: bool = Field(False, description="false: the schedule exists but is paused")
    # Two at once on the demo's 2 cores, one thread each: the demo took 5.0-5.2 min against 6.1 one at a
    # time on both (measured the same day; tiny models' steps are half Python, which runs on one core).
    max_parallel_stages: int = Field(2, ge=1, le=64, description="stages a flow runs at once, each when those it "
                                                               "depends on are done, on cores/this threads; one started "
                                                               "beside another runs in a worker process (1: one after "
                                                               "another, on every core)")
    # DVC rewrites all of dvc.lock to record a stage (1.6 s for the demo's): several at once cost one rewrite.
    record_within_s: float = Field(30.0, ge=0, description="a stage that ran is recorded in dvc.lock before a stage "
                                   "that depends on it starts, and at most this long after it ended (0: at once); "
                                   "a flow killed outright reruns the stages it had not recorded")
    retries: int = Field(2, ge=0, le=10, description="retries of a stage that failed on a transient fault")
    retry_delay_s: float = Field(10.0, ge=0)


class TrackingConfig(Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (sqlite:///..., http://...)")
    experiment: str = Field("lmforge", description="stage runs outside flows; each flow uses <experiment>-<flow>")
    enabled: bool = True
    ui_url: str = Field("http://127.0.0.1:5000", description="where `mlflow ui` shows this store (for links in reports)")
    # MLflow's own defaults (7 retries, backoff factor 2, 120 s) wait minutes on a server that is gone.
    http_retries: int = Field(2, ge=0, le=10, description="an http(s) tracking server: retries of a failed request "
                                                          "(MLFLOW_HTTP_REQUEST_MAX_RETRIES)")
    http_backoff_factor: int = Field(1, ge=0, le=120, description="seconds; retry n waits factor * 2^(n-1) "
                                                                  "(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)")
    http_timeout_s: int = Field(20, ge=1, description="seconds one request may wait for the server "
                                                      "(MLFLOW_HTTP_REQUEST_TIMEOUT)")

    @field_validator("uri", "ui_url")
    @classmethod
    def _no_password(cls, v: str) -> str:
        from urllib.parse import urlsplit

        # params.yaml goes to git and flow parameters to Prefect; MLflow reads credentials from the environment.
        if urlsplit(v).password is not None:
            raise ValueError("a password in the URL would be saved in params.yaml and Prefect; set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead")
        return v


# ---------------------------------------------------------------------------------------- params


class Params(Section):
    """Everything in params.yaml: one section per stage."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    crosslingual: CrosslingualConfig = Field(default_factory=CrosslingualConfig)
    when_bert_learns: WhenBertLearnsConfig = Field(default_factory=WhenBertLearnsConfig)
    seq2seq_ablation: Seq2SeqAblationConfig = Field(default_factory=Seq2SeqAblationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
