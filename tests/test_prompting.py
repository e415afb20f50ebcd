"""Prompting GPT (zero- and k-shot, no training) on a tiny model whose preference is set by hand."""

import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.components.config import GptTokenizerConfig, PromptConfig, PromptRun, TrackingConfig
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.prompting import (
    demonstration, encode_prompt, generate, majority_label, pick_demonstrations, prompt_classify,
)
from lmforge.components.tokenizer import train_gpt_tokenizer
from tests.conftest import init_dir

OFF = TrackingConfig(enabled=False)
POSITIONS = 128

# sst2: train 7 negative / 5 positive (majority: negative); validation 7 negative / 3 positive.
SST2_TRAIN = [("the visit to the Tedal Works was terrible .", 0), ("the visit to the Raizi Bank was great .", 1),
              ("the visit to the Dakrein Company was awful .", 0), ("the visit to the Orvane Institute was lovely .", 1),
              ("the visit to the Tedal Works was boring .", 0), ("the visit to the Raizi Bank was not lovely .", 0),
              ("the visit to the Dakrein Company was superb .", 1), ("the visit to the Orvane Institute was poor .", 0),
              ("the visit to the Tedal Works was not awful .", 1), ("the visit to the Raizi Bank was bland .", 0),
              ("the visit to the Dakrein Company was dreadful .", 0), ("the visit to the Orvane Institute was great .", 1)]
SST2_VALIDATION = [("the visit to the Nosteis Academy was terrible .", 0), ("the visit to the Debel Bank was great .", 1),
                   ("the visit to the Nosteis Academy was awful .", 0), ("the visit to the Debel Bank was poor .", 0),
                   ("the visit to the Nosteis Academy was lovely .", 1), ("the visit to the Debel Bank was bland .", 0),
                   ("the visit to the Nosteis Academy was boring .", 0), ("the visit to the Debel Bank was dreadful .", 0),
                   ("the visit to the Nosteis Academy was superb .", 1), ("the visit to the Debel Bank was not great .", 0)]
RTE_TRAIN = [("Talia Brandt was born in Velmora.", "Talia Brandt was born in Dreland.", 0),
             ("Oren Vale was born in Kiderk.", "Oren Vale was born in Stogrisland.", 1),
             ("Oren Vale works at the Raizi Bank.", "Oren Vale works in Kiderk.", 1)]


def glue(task: str, train: list[tuple], validation: list[tuple]) -> DatasetDict:
    spec = GLUE_TASKS[task]
    def rows(items):
        return Dataset.from_list([{**dict(zip(spec.text_columns, r[:-1])), "label": r[-1], "idx": i}
                                  for i, r in enumerate(items)], features=spec.features)
    return DatasetDict({"train": rows(train), "validation": rows(validation)})


def prefer(model: GPT2LMHeadModel, token_ids: list[int]) -> None:
    """Make the next-token distribution the same everywhere: uniform over `token_ids`, ~0 elsewhere.

    The final layer norm outputs a constant vector (weight 0, bias 1), so logits = lm_head @ 1:
    32 for the preferred tokens, 0 for all others.
    """
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_ids] = 1.0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """raw/{sst2,rte}; models/gpt-pretrained: a tiny GPT that always prefers the tokens of " great"."""
    root = tmp_path_factory.mktemp("prompting")
    glue("sst2", SST2_TRAIN, SST2_VALIDATION).save_to_disk(str(root / "raw" / "sst2"))
    glue("rte", RTE_TRAIN, RTE_TRAIN).save_to_disk(str(root / "raw" / "rte"))
    texts = [s for s, _ in SST2_TRAIN + SST2_VALIDATION] + [a + " " + b for a, b, _ in RTE_TRAIN]
    texts += ["Review: Sentiment: great terrible True False Question: Answer:"] * 3
    tokenizer = train_gpt_tokenizer(Dataset.from_dict({"text": texts}), GptTokenizerConfig(vocab_size=300, min_frequency=1))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=32, n_layer=1, n_head=2,
                        tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    great = tokenizer(" great", add_special_tokens=False)["input_ids"]
    terrible = tokenizer(" terrible", add_special_tokens=False)["input_ids"]
    assert not set(terrible) <= set(great)  # so " terrible" has a token the model finds ~impossible
    prefer(model, sorted(set(great)))
    folder = root / "models" / "gpt-pretrained"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return root, tokenizer


def config(root, **kwargs) -> PromptConfig:
    # No free-text samples unless a test asks for them (the defaults hold the demo world's prompts).
    return PromptConfig(**{"generate_prompts": [], "reports_dir": str(root / "reports"),
                           "predictions_dir": str(root / "predictions"), **kwargs})


def prompt_in(cfg: PromptConfig, run: PromptRun, root, tracking: TrackingConfig = OFF):
    """The prompt stage's call: the run's model (pretrain.gpt.out_dir unless init names one), here the workspace's."""
    return prompt_classify(cfg, run, init_dir(root, run), root / "raw", tracking)


def test_scores_follow_the_known_preference_beside_the_majority_baseline(workspace):
    root, tokenizer = workspace
    out = prompt_in(config(root), PromptRun(task="sst2"), root)
    assert out == root / "reports" / "gpt-0shot-sst2.json"
    metrics = json.loads(out.read_text())
    # Always "great" (positive): accuracy is the positive share, 3/10. Majority of train is negative: 7/10.
    assert metrics["validation"] == {"accuracy": pytest.approx(3 / 10)}
    assert metrics["majority_baseline"] == {"validation": {"accuracy": pytest.approx(7 / 10)}}
    assert metrics["score"] == pytest.approx(0.3) and metrics["main_metric"] == "accuracy"
    assert {k: metrics[k] for k in ("task", "model", "method", "shots", "init")} == {
        "task": "sst2", "model": "gpt", "method": "prompt", "shots": 0, "init": "pretrained"}
    assert metrics["verbalizers"] == {"negative": "terrible", "positive": "great"}
    assert metrics["template"] == "Review: {sentence}\nSentiment:" and "generations" not in metrics

    rows = [json.loads(line) for line in (root / "predictions" / "gpt-0shot-sst2.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["prediction"] == 1 for r in rows)
    assert [r["label"] for r in rows] == [label for _, label in SST2_VALIDATION]
    # Each " great" token has probability 1/|distinct tokens|: the sum of log-probs is known.
    great = tokenizer(" great", add_special_tokens=False)["input_ids"]
    expected = -len(great) * math.log(len(set(great)))
    assert all(r["log_likelihoods"]["positive"] == pytest.approx(expected, abs=1e-3) for r in rows)
    assert all(r["log_likelihoods"]["negative"] < expected - 20 for r in rows)


def test_custom_verbalizers_and_max_eval_examples(workspace):
    root, _ = workspace
    # Swapping the words flips the preferred label: always negative now, on the first 4 rows (3 negative).
    cfg = config(root, verbalizers={"sst2": ["great", "terrible"]}, max_eval_examples=4)
    metrics = json.loads(prompt_in(cfg, PromptRun(task="sst2"), root).read_text())
    assert metrics["validation"]["accuracy"] == pytest.approx(3 / 4)
    assert metrics["majority_baseline"]["validation"]["accuracy"] == pytest.approx(3 / 4)


def test_k_shot_prompts_hold_k_balanced_demonstrations_with_their_words(workspace):
    root, tokenizer = workspace
    labels = [label for _, label in SST2_TRAIN]
    picked = pick_demonstrations(labels, 4, 2, seed=0)
    assert len(set(picked)) == 4 and sorted(labels[i] for i in picked) == [0, 0, 1, 1]
    assert pick_demonstrations(labels, 4, 2, seed=0) == picked  # seeded
    assert sorted(labels[i] for i in pick_demonstrations(labels, 12, 2, seed=1)) == [0] * 7 + [1] * 5  # positives run out

    spec, template, words = GLUE_TASKS["sst2"], "Review: {sentence}\nSentiment:", ["terrible", "great"]
    rows = glue("sst2", SST2_TRAIN, SST2_VALIDATION)
    demos = [demonstration(template, rows["train"][i], spec, words) for i in picked]
    query = template.format(sentence=SST2_VALIDATION[0][0])
    ids, kept = encode_prompt(tokenizer, demos, query, max_tokens=10_000)
    text = tokenizer.decode(ids[1:])
    assert kept == 4 and ids[0] == tokenizer.eos_token_id and text.count("Sentiment:") == 5
    blocks = text.split("\n\n")
    assert blocks[-1] == query and len(blocks) == 5
    for block, i in zip(blocks, picked):
        sentence, label = SST2_TRAIN[i]
        assert block == f"Review: {sentence}\nSentiment: {words[label]}"


def test_long_prompts_drop_the_earliest_demonstrations_to_fit(workspace):
    root, tokenizer = workspace
    demos = [f"Review: {s}\nSentiment: {'great' if y else 'terrible'}" for s, y in SST2_TRAIN[:6]]
    query = f"Review: {SST2_VALIDATION[0][0]}\nSentiment:"
    full, _ = encode_prompt(tokenizer, demos, query, 10_000)
    ids, kept = encode_prompt(tokenizer, demos, query, len(full) - 1)
    assert kept == 5 and tokenizer.decode(ids[1:]) == "\n\n".join([*demos[1:], query])
    ids, kept = encode_prompt(tokenizer, demos, query, 8)  # not even the query fits: its start is cut
    assert kept == 0 and len(ids) == 8 and ids[0] == tokenizer.eos_token_id and ids[1:] == full[-7:]

    # Through the stage: 8 shots do not fit in 128 positions; every prompt is cut to fit.
    prompt_in(config(root), PromptRun(task="sst2", shots=8), root)
    rows = [json.loads(line) for line in (root / "predictions" / "gpt-8shot-sst2.jsonl").read_text().splitlines()]
    longest_word = len(tokenizer(" terrible", add_special_tokens=False)["input_ids"])
    assert all(r["prompt_tokens"] <= POSITIONS - longest_word for r in rows)
    assert all(0 < r["shots"] < 8 for r in rows) and all(r["prediction"] == 1 for r in rows)


def test_majority_baseline_by_hand():
    assert majority_label([0, 1, 1, 2, 2, 2], 3) == 2
    assert majority_label([1, 0, 1, 0], 2) == 0  # a tie goes to the lowest id
    assert majority_label([], 2) == 0


def test_user_mistakes_fail_clearly(workspace, tmp_path):
    root, _ = workspace
    with pytest.raises(LmforgeError, match=r"prompt.verbalizers.sst2: 1 word\(s\) \['bad'\] but task 'sst2' has 2 labels"):
        prompt_in(config(root, verbalizers={"sst2": ["bad"]}), PromptRun(task="sst2"), root)
    with pytest.raises(LmforgeError, match=r"prompt task 'stsb': a regression task"):
        prompt_in(config(root), PromptRun(task="stsb"), root)
    with pytest.raises(LmforgeError, match=r"init checkpoint .*nowhere: folder not found"):
        prompt_in(config(root), PromptRun(task="sst2", init=str(tmp_path / "nowhere")), root)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((root / "models" / "gpt-pretrained" / "config.json").read_text())
    with pytest.raises(LmforgeError, match=r"no model.safetensors \(found config.json\)"):
        prompt_in(config(root), PromptRun(task="sst2", init=str(no_weights)), root)
    save_file({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 2)}, no_weights / "model.safetensors")
    (no_weights / "config.json").write_text(json.dumps({"architectures": ["BertForPreTraining"], "model_type": "bert"}))
    with pytest.raises(LmforgeError, match=r"a BertForPreTraining checkpoint, expected a causal language model"):
        prompt_in(config(root), PromptRun(task="sst2", init=str(no_weights)), root)
    with pytest.raises(LmforgeError, match=r"dataset .*qnli not found; ingest it first"):
        prompt_in(config(root), PromptRun(task="qnli"), root)
    with pytest.raises(LmforgeError, match=r"prompt.shots 8: the train split has only 3 rows"):
        prompt_in(config(root), PromptRun(task="rte", shots=8), root)


def test_generate_is_deterministic_when_greedy_and_seeded_when_sampling(workspace):
    root, _ = workspace
    folder = root / "models" / "gpt-pretrained"
    greedy = generate(folder, ["the visit to the", ""], max_new_tokens=5, temperature=0, top_k=0, seed=0)
    assert greedy == generate(folder, ["the visit to the", ""], max_new_tokens=5, temperature=0, top_k=0, seed=1)
    assert len(greedy) == 2 and all(isinstance(t, str) and t for t in greedy)
    before = torch.get_rng_state()
    sampled = generate(folder, ["the visit to the"], max_new_tokens=5, temperature=1.0, top_k=50, seed=3)
    assert torch.equal(before, torch.get_rng_state())  # the caller's random state is left alone
    assert sampled == generate(folder, ["the visit to the"], max_new_tokens=5, temperature=1.0, top_k=50, seed=3)
    # The model only ever emits the tokens of " great".
    assert set(sampled[0]) <= set(" great")


def test_generations_in_metrics_and_mlflow_run(workspace, tmp_path):
    root, _ = workspace
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="prompting")
    cfg = config(root, generate_prompts=["the visit to the"], max_new_tokens=3, temperature=0)
    out = prompt_in(cfg, PromptRun(task="rte", shots=2), root, tracking)
    metrics = json.loads(out.read_text())
    assert metrics["generations"][0]["prompt"] == "the visit to the" and metrics["generations"][0]["continuation"]
    assert metrics["verbalizers"] == {"entailment": "True", "not_entailment": "False"}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("prompting").experiment_id])
    assert run.info.run_name == "prompt-gpt-2shot-rte" and run.info.status == "FINISHED"
    assert run.data.params["shots"] == "2" and run.data.params["task"] == "rte"
    assert run.data.metrics["validation/accuracy"] == pytest.approx(metrics["validation"]["accuracy"])
    assert "majority_baseline/validation/accuracy" in run.data.metrics
    assert (run.data.tags["lmforge.task"], run.data.tags["lmforge.model"], run.data.tags["lmforge.stage"]) == (
        "rte", "gpt", "prompt")
    # This rte's validation rows are its train rows: the same digest, so a name of its own.
    assert sorted((i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
                  for i in run.inputs.dataset_inputs) == [("rte", "training"), ("rte-validation", "validation")]
