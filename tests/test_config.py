from pathlib import Path

import pytest
import yaml

from lmforge.components.config import Params
from lmforge.components.params_file import apply_override, load_params, validate_params
from lmforge.components.errors import LmforgeError
from tests.conftest import REPO


def dotted_keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "runs":
            keys |= dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_repository_params_name_every_parameter():
    """params.yaml is where users look: every parameter the models know is written out in it."""
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    assert dotted_keys(written) == dotted_keys(Params().model_dump(mode="json"))
    load_params(REPO / "params.yaml")  # and it is valid


def differences(old, new, prefix=""):
    """Dotted keys whose values differ between two dumps, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in dict.fromkeys([*old, *new]) for d in differences(old.get(key), new.get(key),
                                                                             f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: params.yaml {old!r}, default {new!r}"]


def test_params_yaml_equals_defaults():
    """The defaults have one home, config.py; params.yaml spells out the same values for users to read
    and edit (the demo runs what it says), so the two must agree value by value."""
    written, defaults = load_params(REPO / "params.yaml").model_dump(), Params().model_dump()
    assert written == defaults, "params.yaml differs from config.py's defaults:\n" + "\n".join(
        differences(written, defaults))


def test_every_consumer_of_a_pretrained_model_reads_pretrain_out_dir(monkeypatch, tmp_path):
    """pretrain.<model>.out_dir is the one definition of where a pretrained model is: moving it moves
    the finetune stage's init (pretrained and scratch), prompting, `lmforge generate`, the reports and
    the registry with it."""
    from lmforge.components import prompting, stages
    from lmforge.components.cli import main
    from lmforge.components.config import FinetuneRun, PromptRun
    from lmforge.components.evaluation import crosslingual, pretrained_vs_scratch, why_bert
    from lmforge.components.finetuning import finetune
    from lmforge.components.registry.register import candidate

    monkeypatch.chdir(tmp_path)
    moved = {"pretrain": {"bert": {"out_dir": "elsewhere/bert"}, "gpt": {"out_dir": "elsewhere/gpt"}}}
    params = validate_params(moved)
    assert FinetuneRun(task="rte", init="scratch").init_dir(params.pretrain) == Path("elsewhere/bert")
    assert FinetuneRun(task="rte", init="my/checkpoint").init_dir(params.pretrain) == Path("my/checkpoint")
    assert PromptRun(task="sst2").init_dir(params.pretrain) == Path("elsewhere/gpt")

    # Each stage as it runs, its work replaced by noting the model folder it was given.
    seen = {}
    monkeypatch.setattr(finetune, "finetune", lambda cfg, run, init_dir, *_: seen.setdefault("finetune", init_dir))
    monkeypatch.setattr(prompting, "prompt_classify", lambda cfg, run, init_dir, *_: seen.setdefault("prompt", init_dir))
    monkeypatch.setattr(prompting, "generate", lambda model, *_: [seen.setdefault("generate", model)])
    monkeypatch.setattr(crosslingual, "crosslingual_report", lambda cfg, model, *_: seen.setdefault("crosslingual", model))
    monkeypatch.setattr(why_bert, "why_bert_report", lambda cfg, model, out: seen.setdefault("report", model))
    monkeypatch.setattr(pretrained_vs_scratch, "pretrained_vs_scratch_report", lambda *_: None)
    for stage in (stages.finetune, stages.prompt, stages.crosslingual, stages.report):
        stage(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(moved))
    assert main(["generate", "hello"]) == 0
    assert seen == {"finetune": Path("elsewhere/bert"), "prompt": Path("elsewhere/gpt"),
                    "crosslingual": Path("elsewhere/bert"), "report": Path("elsewhere/bert"),
                    "generate": Path("elsewhere/gpt")}
    with pytest.raises(LmforgeError, match="registry: model folder elsewhere/bert not found"):
        candidate(params, "bert-pretrained")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tokenizer": {"bert": {"vocab_size": 5}}}, "tokenizer.bert.vocab_size: must be >= 100, got 5"),
        ({"tokenizer": {"gpt": {"vocab_size": 200}}}, "tokenizer.gpt.vocab_size: must be >= 300, got 200"),
        ({"tokenizer": {"bogus": 1}}, "tokenizer.bogus: unknown key"),
        ({"nope": {}}, "nope: unknown key"),
        ({"ingest": {"demo": {"entities": "many"}}}, "ingest.demo.entities: expected an integer, got 'many'"),
        ({"ingest": {"demo": {"corpus_documents": 0}}}, "ingest.demo.corpus_documents: must be >= 10, got 0"),
        ({"ingest": {"demo": {"enabled": "perhaps"}}}, "ingest.demo.enabled: expected true or false"),
        ({"ingest": {"sources": [{"name": "x", "source": "s3://bucket"}]}}, "ingest.sources.0.source: expected 'local'"),
        ({"ingest": {"sources": [{"name": "x", "source": "local"}]}}, "needs both 'format' and 'data_files'"),
        (
            {"ingest": {"sources": [{"name": "x", "source": "local", "format": "xml", "data_files": "a"}]}},
            "ingest.sources.0.format: expected one of",
        ),
        (
            {"ingest": {"sources": [{"name": "x", "source": "hf:a", "task": "glue"}]}},
            "ingest.sources.0.task: expected one of",
        ),
        (
            {"ingest": {"sources": [{"name": "a", "source": "hf:a"}, {"name": "a", "source": "hf:b"}]}},
            "repeated: a",
        ),
        ({"ingest": {"sources": [{"name": "../evil", "source": "hf:a"}]}}, "ingest.sources.0.name: expected a name"),
    ],
)
def test_bad_values_name_the_dotted_key(raw, message):
    with pytest.raises(LmforgeError, match="params.yaml: ") as err:
        validate_params(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tokenizer:\n  bert:\n    vocab_size: 500\n")
    p = load_params(params, ["tokenizer.bert.vocab_size=800", "tokenizer.bert.lowercase=false", "ingest.demo.seed=7"])
    assert p.tokenizer.bert.vocab_size == 800
    assert p.tokenizer.bert.lowercase is False
    assert p.ingest.demo.seed == 7
    assert p.tokenizer.gpt.vocab_size == Params().tokenizer.gpt.vocab_size


def test_override_into_a_list_and_bad_overrides():
    raw = {"ingest": {"sources": [{"name": "a", "source": "hf:x"}]}}
    apply_override(raw, "ingest.sources.0.name=b")
    assert validate_params(raw).ingest.sources[0].name == "b"
    with pytest.raises(LmforgeError, match="expected section.key=value"):
        apply_override({}, "tokenizer.bert.vocab_size")
    with pytest.raises(LmforgeError, match="expected an index below 1"):
        apply_override(raw, "ingest.sources.3.name=c")


def test_missing_unreadable_and_malformed_params_files(tmp_path):
    with pytest.raises(LmforgeError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer:\n  bert:\n    vocab_size: [1, 2\n")
    with pytest.raises(LmforgeError, match=r"bad.yaml: line \d+, column \d+: YAML syntax error"):
        load_params(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("tokenizer: {corpus: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(LmforgeError, match="cannot read params file"):
        load_params(latin)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(LmforgeError, match="expected a mapping of sections"):
        load_params(scalar)


def test_override_of_an_anchored_section_changes_only_that_section():
    """params.yaml shares `train: *train` between BERT and GPT; -S on one must leave the other."""
    p = load_params(REPO / "params.yaml", ["pretrain.bert.train.max_steps=7"])
    assert p.pretrain.bert.train.max_steps == 7
    assert p.pretrain.gpt.train.max_steps == Params().pretrain.gpt.train.max_steps


def test_precision_given_as_a_number_on_the_command_line():
    p = load_params(REPO / "params.yaml", ["pretrain.bert.train.precision=32", "pretrain.gpt.train.precision=bf16-mixed"])
    assert p.pretrain.bert.train.precision == "32" and p.pretrain.gpt.train.precision == "bf16-mixed"


def test_finetune_run_names_must_match_their_runs():
    with pytest.raises(LmforgeError, match=r"finetune: runs.bert-rte: a run of bert on rte from scratch is named 'bert-scratch-rte'"):
        validate_params({"finetune": {"runs": {"bert-rte": {"task": "rte", "init": "scratch"}}}})
    with pytest.raises(LmforgeError, match=r"finetune.task: expected one of"):
        validate_params({"finetune": {"task": "glue"}})


def test_a_run_with_its_own_seed_is_named_for_it_and_picked_by_name():
    params = validate_params({"finetune": {"runs": {
        "bert-qnli": {"task": "qnli"}, "bert-scratch-qnli-seed1": {"task": "qnli", "init": "scratch", "seed": 1}}}})
    assert params.finetune.selected().name == "bert-sst2"  # no run named: the task/model/init/seed at the top
    chosen = params.finetune.model_copy(update={"run": "bert-scratch-qnli-seed1"}).selected()
    assert (chosen.task, chosen.init, chosen.seed) == ("qnli", "scratch", 1)
    top = validate_params({"finetune": {"task": "rte", "seed": 3}}).finetune.selected()
    assert top.name == "bert-rte-seed3"
    with pytest.raises(LmforgeError, match=r"finetune: run 'bert-rte' is not in finetune.runs \(known: bert-qnli\)"):
        validate_params({"finetune": {"run": "bert-rte", "runs": {"bert-qnli": {"task": "qnli"}}}})


def test_the_architecture_page_draws_every_stage_of_dvc_yaml():
    """docs/architecture.md's graph is written by hand: it must name every stage dvc.yaml has."""
    from tests.conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    page = (REPO / "docs" / "architecture.md").read_text()
    graph = page[page.index("```mermaid"):page.index("```", page.index("```mermaid") + 3)]
    assert [s for s in stages if s not in graph] == []


def test_dvc_yaml_stages_depend_on_the_pretrained_folder_their_runs_start_from():
    """pretrain.<model>.out_dir alone says where a pretrained model is. DVC's templating cannot look
    that key up by a run's model, so dvc.yaml's finetune stages spell the folder out: it must be the
    one each run starts from (prompt and crosslingual name pretrain.*.out_dir themselves)."""
    from dvc.repo import Repo

    params = load_params(REPO / "params.yaml")
    with Repo(str(REPO)) as repo:
        deps = {stage.addressing: {dep.def_path for dep in stage.deps} for stage in repo.index.stages}
    starts = {f"finetune@{name}": run.init_dir(params.pretrain) for name, run in params.finetune.runs.items()}
    starts |= {f"prompt@{name}": run.init_dir(params.pretrain) for name, run in params.prompt.runs.items()}
    starts["crosslingual"] = params.pretrain.model_dir("bert")
    assert {stage: str(start) for stage, start in starts.items() if str(start) not in deps[stage]} == {}


def _lmforge_imports(tree, seen: set[str]) -> set[str]:
    """Every lmforge module the code in `tree` imports, at its top or inside functions, transitively."""
    import ast
    import importlib.util

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # a module or a name in one
        else:
            continue
        for name in names:
            if not name.startswith("lmforge") or name in seen:
                continue
            try:
                spec = importlib.util.find_spec(name)
            except ModuleNotFoundError:  # a function or class imported from a module
                spec = None
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                seen.add(name)
                _lmforge_imports(ast.parse(Path(spec.origin).read_text()), seen)
    return seen


def test_every_stage_that_imports_the_training_layer_depends_on_it():
    """A change to training/ (the Lightning module under every run: optimizer, dropout, the sparse
    last layer, the run records) must make each stage whose code imports it stale in `dvc status`,
    not only changes to its own package (a bug: pretraining listed lmforge/components/pretraining alone)."""
    import ast
    import inspect
    import textwrap

    from lmforge.components.stages import STAGES

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    trains = []
    for name, stage in declared.items():
        stage = stage.get("do", stage)
        function = STAGES[stage["cmd"].split()[2]]  # `lmforge stage NAME`
        seen = _lmforge_imports(ast.parse(textwrap.dedent(inspect.getsource(function))), set())
        if "lmforge.components.training.module" in seen:
            trains.append(name)
            assert "lmforge/components/training" in stage["deps"], f"dvc.yaml stage {name}: {stage['deps']}"
    assert {"pretrain-bert", "pretrain-gpt", "finetune", "crosslingual", "when-bert-learns"} <= set(trains), trains
