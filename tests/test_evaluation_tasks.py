"""Suites, loaders, `--limit` sampling and answer extraction (no model needed)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from spear_mm.errors import SpearError
from spear_mm.evaluation import MCItem, MissingDataError, TaskSpec, get_suite, load_task, load_tasks, select_items
from spear_mm.evaluation.aggregate import extract_answer, normalize_answer
from spear_mm.evaluation.prompts import GSM8K_FIXED_SHOTS, gsm8k_cot
from spear_mm.evaluation.suites import resolve_tasks
from spear_mm.evaluation.tasks import DEFAULT_ANSWER_REGEX


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- --limit sampling --------------------------------------------------------------------------------
def _sorted_items(counts: dict[str, int]) -> list[MCItem]:
    labels = list(counts)
    return [MCItem(f"{lab}-{i}", "x", tuple(labels), labels.index(lab)) for lab in labels for i in range(counts[lab])]


def test_limit_is_stratified_not_the_first_n():
    items = _sorted_items({"positive": 570, "neutral": 1391, "negative": 303})  # FPB AllAgree, sorted by label
    chosen = select_items(items, 200, seed=0)
    counts = Counter(i.choices[i.label] for i in chosen)
    assert len(chosen) == 200
    assert counts == {"neutral": 123, "positive": 50, "negative": 27}  # proportional shares
    assert [i.id for i in chosen] == [i.id for i in items if i in chosen]  # original order kept


def test_limit_is_seeded_and_keeps_every_label():
    items = _sorted_items({"a": 100, "b": 3, "c": 1})
    first, again, other = select_items(items, 8, 0), select_items(items, 8, 0), select_items(items, 8, 1)
    assert first == again and first != other
    assert {i.label for i in first} == {0, 1, 2}
    assert select_items(items, None) == items and select_items(items, 1000) == items


# ---- loaders -----------------------------------------------------------------------------------------
def test_missing_file_names_task_and_layout(tmp_path):
    with pytest.raises(MissingDataError, match=r"arc_easy.*arc/ARC-Easy-test.jsonl"):
        load_tasks("general", data_dir=tmp_path)


def test_skip_missing_records_the_reason(tmp_path):
    _write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 1}])
    specs = [
        {"name": "mine", "kind": "multiple_choice", "loader": "jsonl_mc", "path": "mc.jsonl"},
        {"name": "absent", "kind": "multiple_choice", "loader": "jsonl_mc", "path": "nope.jsonl"},
    ]
    skipped: dict[str, str] = {}
    loaded = load_tasks(specs, tmp_path, skip_missing=True, skipped=skipped)
    assert [t.name for t in loaded] == ["mine"] and "nope.jsonl" in skipped["absent"]


def test_malformed_jsonl_reports_the_line_number(tmp_path):
    _write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 0}, "{not json"])
    spec = TaskSpec(name="mine", kind="multiple_choice", loader="jsonl_mc", path="mc.jsonl")
    with pytest.raises(SpearError, match=r"mc.jsonl:2: malformed JSON"):
        load_task(spec, tmp_path)


def test_jsonl_mc_label_as_index_or_text_and_bad_label(tmp_path):
    rows = [
        {"question": "2+2?", "choices": ["4", "5"], "label": 0, "id": "x"},
        {"question": "1+1?", "choices": ["3", "2"], "label": "2"},
    ]
    spec = TaskSpec(
        name="mine", kind="multiple_choice", loader="jsonl_mc", path=str(_write_jsonl(tmp_path / "a.jsonl", rows))
    )
    items = load_task(spec).items
    assert items[0] == MCItem("x", "Question: 2+2?\nAnswer:", ("4", "5"), 0) and items[1].label == 1
    _write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 5}])
    with pytest.raises(SpearError, match="line 1"):
        load_task(spec.model_copy(update={"path": str(tmp_path / "b.jsonl")}))


def test_fpb_latin1_and_reuters_topics(tmp_path):
    (tmp_path / "fpb").mkdir()
    (tmp_path / "fpb" / "Sentences_AllAgree.txt").write_bytes(
        "Profit rose to EUR 5 mn \xa0.@positive\n".encode("latin-1")
    )
    (fpb,) = load_task(get_suite("domain").tasks[0], tmp_path).items
    assert fpb.choices == ("negative", "neutral", "positive") and fpb.label == 2 and "Profit rose" in fpb.context
    (tmp_path / "reuters21578").mkdir()
    rows = [
        {
            "newid": 1,
            "lewissplit": "TEST",
            "topics": ["crude", "usa"],
            "title": "OIL UP",
            "body": "Oil rose.\n    More.",
        },
        {"newid": 2, "lewissplit": "TEST", "topics": ["earn", "acq"], "title": "TWO", "body": "Two topics."},
        {"newid": 3, "lewissplit": "TRAIN", "topics": ["earn"], "title": "T", "body": "Train split."},
    ]
    with gzip.open(tmp_path / "reuters21578" / "reuters21578.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    topic, ppl = (load_task(s, tmp_path) for s in get_suite("domain").tasks[1:])
    (item,) = topic.items  # one TEST article with exactly one of the 8 topics
    assert item.choices[item.label] == "crude oil" and "Title: OIL UP\nArticle: Oil rose." in item.context
    assert "More." not in item.context  # the lead paragraph only
    assert [i.id for i in ppl.items] == ["reuters-1", "reuters-2"]


def test_wikitext_chunks_at_paragraphs_within_articles(tmp_path):
    text = " = A = \r\n" + "".join(f" para {i} " * 30 + "\r\n" for i in range(5)) + " = B = \r\n short\r\n"
    (tmp_path / "w.raw").write_text(text, encoding="utf-8")
    spec = TaskSpec(name="w", kind="perplexity", loader="wikitext", path="w.raw", chunk_chars=500)
    items = load_task(spec, tmp_path).items
    assert [i.id for i in items] == ["wiki-0-0", "wiki-0-1", "wiki-1-0"]  # 4 + 2 paragraphs, then article B
    assert "\r" not in items[0].text and items[-1].text == " = B = \n short"


def test_text_files_blank_line_documents(tmp_path):
    (tmp_path / "t.txt").write_text("doc one.\n\ndoc two.\n\n\ndoc three.\n", encoding="utf-8")
    spec = TaskSpec(name="t", kind="perplexity", loader="text", path="t.txt", chunk_chars=0)
    assert [i.text for i in load_task(spec, tmp_path).items] == ["doc one.", "doc two.", "doc three."]


def test_gsm8k_fewshot_never_uses_the_test_item(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    test = [{"question": f"Q{i}?", "answer": f"work\n#### {i},000"} for i in range(3)]
    train = [*test, {"question": "Train?", "answer": "2+2=<<2+2=4>>4\n#### 4"}]  # train overlaps test here
    _write_jsonl(tmp_path / "gsm8k" / "test.jsonl", test)
    _write_jsonl(tmp_path / "gsm8k" / "train.jsonl", train)
    fixed = load_task(get_suite("general").tasks[2], tmp_path)
    assert fixed.items[0].answer == "0000" and fixed.items[0].prompt.endswith("Q: Q0?\nA:")
    assert fixed.items[0].prompt.count("The answer is") == len(GSM8K_FIXED_SHOTS)
    spec = get_suite("general").tasks[2].model_copy(update={"fewshot": "train", "num_fewshot": 4})
    item = load_task(spec, tmp_path).items[1]
    assert item.prompt.startswith("Q: Train?\nA: 2+2=4 The answer is 4.") and item.prompt.count("Q1?") == 1


def test_suites_yaml_and_duplicates(tmp_path):
    assert [t.name for t in resolve_tasks("general,domain")][:2] == ["arc_easy", "arc_challenge"]
    path = tmp_path / "s.yaml"
    path.write_text("name: mine\ngroup: domain\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: x.txt}\n")
    (spec,) = resolve_tasks(str(path))
    assert spec.group == "domain" and spec.primary_metric == "inv_ppl"
    path.write_text("tasks:\n  - {name: t, kind: perplexity, loader: text, pth: x.txt}\n")
    with pytest.raises(SpearError, match="pth"):
        resolve_tasks(str(path))
    with pytest.raises(SpearError, match="unknown suite"):
        resolve_tasks("generall")


# ---- GSM8K answer extraction ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" Janet sells 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is 18.", "18"),
        (" 5 + 4 = 9. The answer is 9. The answer is 10.", "10"),  # the last statement wins
        (" She has $1,250.50 left. The answer is $1,250.50.", "1250.5"),
        (" The total is 1,000.", "1000"),  # no "The answer is": last number
        (" x = 3 so y = 7\n#### 7", "7"),
        (" The answer is -4.", "-4"),
        (" I do not know.", None),
    ],
)
def test_gsm8k_answer_extraction(output, expected):
    assert normalize_answer(extract_answer(output, DEFAULT_ANSWER_REGEX)) == expected


def test_gold_normalisation_and_cot_rewrite():
    assert normalize_answer("18") == normalize_answer("18.00") == normalize_answer("$18") == "18"
    assert gsm8k_cot("3*2=<<3*2=6>>6 apples\nso 6\n#### 6") == "3*2=6 apples so 6 The answer is 6."


def test_a_task_limit_caps_its_items_and_the_smaller_limit_wins(tmp_path):
    (tmp_path / "d.txt").write_text("\n\n".join(f"document {i}." for i in range(30)))
    spec = TaskSpec(name="t", kind="perplexity", loader="text", path=str(tmp_path / "d.txt"), chunk_chars=0, limit=5)
    assert len(load_task(spec).items) == 5
    assert len(load_task(spec, limit=3).items) == 3  # --limit smaller: it wins
    assert len(load_task(spec, limit=20).items) == 5  # the task's own cap wins
    assert len(load_task(spec.model_copy(update={"limit": None}), limit=20).items) == 20
    with pytest.raises(SpearError, match="limit"):
        resolve_tasks([{"name": "t", "kind": "perplexity", "loader": "text", "path": "x", "limit": 0}])
