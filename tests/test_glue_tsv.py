"""GLUE TSV folders, written as `download_glue_data.py` leaves them, read into the Hub's rows."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from lmforge.components.data.glue_tsv import read_glue_dir  # noqa: E402
from lmforge.components.data.schemas import GLUE_TASKS  # noqa: E402
from lmforge.components.errors import LmforgeError  # noqa: E402

MNLI_PARSES = "( ( The cat ) ( sat . ) )\t( ( A cat ) sat )\t(ROOT (S (NP The cat) (VP sat)))\t(ROOT (S (NP A cat) (VP sat)))"
MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
    "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
)

FILES = {
    "CoLA": {
        "train.tsv": [
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
            "gj04\t0\t*\tThey drank the pub.",
            'bc01\t1\t\tHe said "go" and left.',
        ],
        "dev.tsv": ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks."],
        "test.tsv": ["index\tsentence", "0\tBill whistled past the house."],
    },
    "SST-2": {
        "train.tsv": [
            "sentence\tlabel",
            "hide new secretions from the parental units \t0",
            'the "best" movie of the year \t1',
        ],
        "dev.tsv": ["sentence\tlabel", "it 's a charming and often affecting journey . \t1"],
        "test.tsv": ["index\tsentence", "0\tuneasy mishmash of styles and genres ."],
    },
    "MRPC": {
        "train.tsv": [
            "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",  # the BOM copied from Microsoft's file
            '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of deliberately '
            'distorting his evidence .\tReferring to him as only " the witness " , Amrozi accused his brother of '
            "deliberately distorting his evidence .",
            "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 "
            "billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 "
            "billion in 1998 .",
        ],
        "dev.tsv": [
            "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            "1\t1355540\t1355592\tHe said the foodservice pie business doesn 't fit .\tThe foodservice pie "
            "business does not fit .",
        ],
        "test.tsv": [
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            "1\t1089874\t1089925\tPCCW 's chief operating officer will resign .\tThe chief operating officer "
            "will resign .",
        ],
    },
    "QQP": {
        "train.tsv": [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0",
            "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1",
            "201841\t303951\t174364\tHow can I create an Android app?",  # a question broken over two lines
            "\tHow can I develop android app?\t1",
            '150662\t155721\t7256\tWhat can one do after "MBBS"?\tWhat do i do after my MBBS ?\t1',
        ],
        "dev.tsv": [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0",
        ],
        "test.tsv": [
            "id\tquestion1\tquestion2",
            "0\tHow does the Surface Pro himself 4 compare with iPad Pro?\tWhy did Microsoft choose core m3?",
        ],
    },
    "STS-B": {
        "train.tsv": [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000",
            "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a flute.\t3.800",
        ],
        "dev.tsv": [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000",
        ],
        "test.tsv": [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
            "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl is brushing her hair.",
        ],
    },
    "MNLI": {
        "train.tsv": [
            f"{MNLI_HEADER}\tlabel1\tgold_label",
            f"0\t31193\t31193n\tgovernment\t{MNLI_PARSES}\tConceptually cream skimming has two basic dimensions."
            "\tProduct and geography are what make cream skimming work. \tneutral\tneutral",
            f'1\t101457\t101457e\ttelephone\t{MNLI_PARSES}\tyou know during the season and i guess at "at" your level'
            "\tYou lose the things to the following level if the people recall.\tentailment\tentailment",
            f"2\t134793\t134793e\tfiction\t{MNLI_PARSES}\tOne of our number will carry out your instructions minutely."
            "\tA member of my team will execute your orders with immense precision.\tcontradiction\tcontradiction",
        ],
        "dev_matched.tsv": [
            f"{MNLI_HEADER}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
            f"0\t63735\t63735n\tslate\t{MNLI_PARSES}\tThe new rights are nice enough\tEveryone really likes the newest "
            "benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral",
        ],
        "dev_mismatched.tsv": [
            f"{MNLI_HEADER}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
            f"0\t75290\t75290c\tletters\t{MNLI_PARSES}\tYour contribution helped make it possible for us to provide "
            "our students with a quality education.\tYour contributions were of no help.\tcontradiction"
            "\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction",
        ],
        "test_matched.tsv": [MNLI_HEADER, f"0\t31493\t31493\ttravel\t{MNLI_PARSES}\tHierbas, ans seco.\tThe drinks."],
        "test_mismatched.tsv": [MNLI_HEADER, f"0\t16130\t16130\tfacetoface\t{MNLI_PARSES}\tWhat have you decided?\tWhat."],
    },
    "QNLI": {
        "train.tsv": [
            "index\tquestion\tsentence\tlabel",
            "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, Digimon Tamers takes a "
            "darker approach.\tnot_entailment",
            '1\tWhich missile batteries often have individual launchers?\tThe "Patriot" batteries have '
            "individual launchers.\tentailment",
        ],
        "dev.tsv": ["index\tquestion\tsentence\tlabel", "0\tWhat came into force after the new constitution?\tA law.\tentailment"],
        "test.tsv": ["index\tquestion\tsentence", "0\tWhat organization is devoted to Jihad?\tFor some decades."],
    },
    "RTE": {
        "train.tsv": [
            "index\tsentence1\tsentence2\tlabel",
            "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq."
            "\tnot_entailment",
            "1\tA place of sorrow, after Pope John Paul II died, became a place of celebration.\tPope Benedict XVI "
            "is the new leader of the Roman Catholic Church.\tentailment",
        ],
        "dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tDana Reeve died of lung cancer.\tReeve died.\tentailment"],
        "test.tsv": ["index\tsentence1\tsentence2", "0\tMaude and Dora had seen the trains.\tThey had seen them."],
    },
    "WNLI": {
        "train.tsv": [
            "index\tsentence1\tsentence2\tlabel",
            "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1",
            "1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tBilly is so short.\t0",
        ],
        "dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0"],
        "test.tsv": ["index\tsentence1\tsentence2", "0\tMaude and Dora had seen the trains rushing across the prairie.\tThe trains had seen."],
    },
}
TASK_OF = {"CoLA": "cola", "SST-2": "sst2", "MRPC": "mrpc", "QQP": "qqp", "STS-B": "stsb",
           "MNLI": "mnli", "QNLI": "qnli", "RTE": "rte", "WNLI": "wnli"}  # fmt: skip


def write_task(root, folder, replace=None):
    """glue_data/<folder>/ holding FILES[folder], with `replace`'s files swapped in (or left out, given None)."""
    path = root / "glue_data" / folder
    path.mkdir(parents=True)
    for name, lines in {**FILES[folder], **(replace or {})}.items():
        if lines is not None:
            (path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("folder", list(FILES))
def test_every_task_reads_to_the_hub_schema(tmp_path, folder):
    task = GLUE_TASKS[TASK_OF[folder]]
    data = read_glue_dir(write_task(tmp_path, folder), TASK_OF[folder])
    assert tuple(data) == task.splits
    for split, ds in data.items():
        assert ds.features == task.features, split
        assert ds.column_names == list(task.features)
    for split in task.test_splits:
        assert set(data[split]["label"]) == {-1.0 if task.is_regression else -1}


def test_cola_headerless_train_and_quotes_kept(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "CoLA"), "cola")
    assert data["train"][:] == {
        "sentence": [
            "Our friends won't buy this analysis, let alone the next one we propose.",
            "They drank the pub.",
            'He said "go" and left.',
        ],
        "label": [1, 0, 1],
        "idx": [0, 1, 2],
    }
    assert data["test"][0] == {"sentence": "Bill whistled past the house.", "label": -1, "idx": 0}


def test_sst2_unquoted_double_quotes_and_trailing_space_kept(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "SST-2"), "sst2")
    assert data["train"][1] == {"sentence": 'the "best" movie of the year ', "label": 1, "idx": 1}


def test_mrpc_bom_header_and_test_labels_hidden(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "MRPC"), "mrpc")
    row = data["train"][0]
    assert row["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness "')
    assert (row["label"], row["idx"]) == (1, 0)
    assert data["train"]["label"] == [1, 0]
    assert data["test"][0]["label"] == -1


def test_mrpc_test_with_index_header_as_download_glue_data_writes_it(tmp_path):
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1089874\t1089925\tA b .\tC d ."]
    data = read_glue_dir(write_task(tmp_path, "MRPC", {"test.tsv": test}), "mrpc")
    assert data["test"][0] == {"sentence1": "A b .", "sentence2": "C d .", "label": -1, "idx": 0}


def test_qqp_malformed_rows_skipped_counted_and_idx_keeps_row_numbers(tmp_path, caplog):
    warnings = []
    data = read_glue_dir(write_task(tmp_path, "QQP"), "qqp", warnings=warnings)
    assert data["train"]["idx"] == [0, 1, 4]
    assert data["train"]["label"] == [0, 1, 1]
    assert data["train"][2]["question1"] == 'What can one do after "MBBS"?'
    assert len(warnings) == 1
    assert "train.tsv" in warnings[0] and "skipped 2 malformed row(s)" in warnings[0] and "lines 4, 5" in warnings[0]
    assert "skipped 2" in caplog.text
    assert data["test"][0]["label"] == -1


def test_stsb_scores_and_test_without_score(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "STS-B"), "stsb")
    assert data["train"]["label"] == pytest.approx([5.0, 3.8])
    assert data["train"][1]["sentence2"] == "A man is playing a flute."
    assert data["test"][0]["label"] == -1.0
    assert data["test"][0]["sentence1"] == "A girl is styling her hair."


def test_mnli_split_names_and_string_labels(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "MNLI"), "mnli")
    assert list(data) == ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
    assert data["train"]["label"] == [1, 0, 2]  # neutral, entailment, contradiction
    assert data["train"][1]["premise"] == 'you know during the season and i guess at "at" your level'
    assert data["validation_matched"][0]["hypothesis"] == "Everyone really likes the newest benefits "
    assert data["validation_matched"]["label"] == [1]  # gold_label, not label1..label5
    assert data["validation_mismatched"]["label"] == [2]
    assert data["test_mismatched"][0] == {"premise": "What have you decided?", "hypothesis": "What.", "label": -1, "idx": 0}


def test_qnli_rte_wnli_label_ids(tmp_path):
    assert read_glue_dir(write_task(tmp_path, "QNLI"), "qnli")["train"]["label"] == [1, 0]
    rte = read_glue_dir(write_task(tmp_path, "RTE"), "RTE")
    assert rte["train"]["label"] == [1, 0]  # not_entailment -> 1
    assert rte["train"][0]["sentence2"] == "Weapons of Mass Destruction Found in Iraq."
    wnli = read_glue_dir(write_task(tmp_path, "WNLI"), "wnli")
    assert wnli["train"]["label"] == [1, 0]  # 1 = entailment, which is id 1 on the Hub
    assert wnli["train"].features["label"].int2str(1) == "entailment"


def test_only_present_splits_returned(tmp_path):
    data = read_glue_dir(write_task(tmp_path, "RTE", {"test.tsv": None}), "rte")
    assert list(data) == ["train", "validation"]


# --- errors: one per case ---------------------------------------------------------------------


def test_missing_column_named(tmp_path):
    train = ["Quality\t#1 ID\t#2 ID\t#1 String", "1\t1\t2\tA b ."]
    with pytest.raises(LmforgeError) as e:
        read_glue_dir(write_task(tmp_path, "MRPC", {"train.tsv": train}), "mrpc")
    assert str(e.value).startswith(str(tmp_path / "glue_data/MRPC/train.tsv") + ": missing column '#2 String'")
    assert "(MRPC needs Quality, #1 String, #2 String;" in str(e.value)


def test_bad_string_label(tmp_path):
    train = FILES["RTE"]["train.tsv"] + ["2\tA.\tB.\tentailment", "3\tC.\tD.\tmaybe"]
    with pytest.raises(LmforgeError, match=r"RTE/train\.tsv line 5: field 'label' is 'maybe', "
                                           r"expected one of entailment, not_entailment$"):  # fmt: skip
        read_glue_dir(write_task(tmp_path, "RTE", {"train.tsv": train}), "rte")


def test_bad_int_label(tmp_path):
    train = ["sentence\tlabel", "good .\t1", "bad .\t7"]
    with pytest.raises(LmforgeError, match=r"SST-2/train\.tsv line 3: field 'label' is '7', expected one of 0, 1"):
        read_glue_dir(write_task(tmp_path, "SST-2", {"train.tsv": train}), "sst2")


def test_bad_stsb_score(tmp_path):
    train = FILES["STS-B"]["train.tsv"][:2] + ["1\tg\tf\ty\t0\tn\tn\tA.\tB.\t7.5"]
    with pytest.raises(LmforgeError, match=r"train\.tsv line 3: field 'score' is '7.5', expected a number in \[0, 5\]"):
        read_glue_dir(write_task(tmp_path, "STS-B", {"train.tsv": train}), "stsb")


def test_non_utf8_bytes_named_with_line_and_offset(tmp_path):
    folder = write_task(tmp_path, "SST-2")
    (folder / "dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9 .\t1\n")
    with pytest.raises(LmforgeError, match=r"SST-2/dev\.tsv line 2: byte 18 \(b'\\xe9'\) is not UTF-8"):
        read_glue_dir(folder, "sst2")


def test_folder_without_train(tmp_path):
    with pytest.raises(LmforgeError, match=r"glue_data/RTE: no train\.tsv \(found dev\.tsv, test\.tsv\); expected"):
        read_glue_dir(write_task(tmp_path, "RTE", {"train.tsv": None}), "rte")


def test_missing_folder(tmp_path):
    with pytest.raises(LmforgeError, match=r"glue_data/RTE: not a folder; expected glue_data/RTE/ holding train\.tsv"):
        read_glue_dir(tmp_path / "glue_data" / "RTE", "rte")


def test_unknown_task(tmp_path):
    with pytest.raises(LmforgeError, match=r"GLUE task 'snli': unknown, expected one of cola, sst2"):
        read_glue_dir(write_task(tmp_path, "RTE"), "snli")


def test_short_row_outside_qqp_is_an_error(tmp_path):
    train = FILES["RTE"]["train.tsv"] + ["2\tA sentence with no pair"]
    with pytest.raises(LmforgeError, match=r"RTE/train\.tsv line 4: 2 tab-separated fields, expected 4"):
        read_glue_dir(write_task(tmp_path, "RTE", {"train.tsv": train}), "rte")


def test_cola_row_with_too_few_fields(tmp_path):
    train = ["gj04\t1\tNo mark column."]
    with pytest.raises(LmforgeError, match=r"CoLA/train\.tsv line 1: 3 tab-separated fields, expected 4 "
                                           r"\(source, label, mark, sentence\)"):  # fmt: skip
        read_glue_dir(write_task(tmp_path, "CoLA", {"train.tsv": train}), "cola")


def test_empty_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"QNLI/dev\.tsv: empty file"):
        read_glue_dir(write_task(tmp_path, "QNLI", {"dev.tsv": [""]}), "qnli")
