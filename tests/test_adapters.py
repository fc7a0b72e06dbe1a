"""Data adapters: the real HH-RLHF and ShareGPT files, broken files, APO writer round-trips and
prompt-disjoint splits. Records of the real data are never printed (content warning)."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from apo.data.adapters import (
    HH_TEMPLATE,
    ChatTemplate,
    DataFormatError,
    golden_from_chosen,
    load_comparisons,
    load_golden,
    load_hh_rlhf,
    load_samples,
    load_sharegpt,
    split_prompts,
    split_transcript,
    write_comparisons,
    write_golden,
    write_samples,
)
from apo.data.game_data import ListwiseItem
from tests.conftest import DATA_DIR

HH_TEST = DATA_DIR / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
DPO_DEMO = DATA_DIR / "llamafactory-dpo-en-demo" / "dpo_en_demo.json"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent (set APO_DATA_DIR to the shared data dir)")
    return path


def _jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _hh(human: str, *replies: str) -> str:
    """A transcript: one Human turn, then Assistant turns with `replies`."""
    return f"\n\nHuman: {human}" + "".join(f"\n\nAssistant: {r}" for r in replies)


# ---- HH-RLHF, real file ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hh_real():
    return load_hh_rlhf(_need(HH_TEST))


def test_hh_real_counts(hh_real):
    items, report = hh_real
    assert report.records == 2312
    assert report.loaded == len(items) == 2303
    assert report.skipped == {"prompt_mismatch": 5, "empty_response": 4}
    assert report.examples["prompt_mismatch"] == [1255, 1689, 1951, 1953, 2037]
    assert report.examples["empty_response"] == [87, 517, 926, 1104]
    assert "2303 loaded" in str(report) and "lines 1255" in str(report)


def test_hh_real_prompts_and_responses(hh_real):
    items, _ = hh_real
    for it in items:
        assert it.prompt.startswith("\n\nHuman: ")
        assert it.prompt.endswith("\n\nAssistant:")
        assert len(it.responses) == 2 and it.scores == [1.0, 0.0]
        for r in it.responses:
            assert r and not r[0].isspace()
            assert "\n\nAssistant:" not in r and "\n\nHuman:" not in r
        assert it.responses[0] != it.responses[1]


def test_hh_real_spot_check_first_record(hh_real):
    items, _ = hh_real
    first = items[0]
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert first.prompt.endswith(
        "\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:"
    )
    assert len(first.prompt) == 742
    assert first.responses[0].startswith("No, sorry!  All of these involve a pen")
    assert first.responses[1].startswith("There are lots of funny things you can do with pens")
    # The prompt is exact: it is the chosen transcript's prefix, byte for byte.
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
        raw = json.loads(f.readline())
    assert raw["chosen"] == first.prompt + " " + first.responses[0]


def test_hh_real_split_is_disjoint_and_keeps_duplicates_together(hh_real):
    items, _ = hh_real
    parts = split_prompts(items, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    prompts = {k: {it.prompt for it in v} for k, v in parts.items()}
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    # Two prompts occur twice in this split: every item is placed, none twice.
    assert sum(len(v) for v in parts.values()) == len(items)
    assert sum(len(p) for p in prompts.values()) == len({it.prompt for it in items}) == 2301


# ---- HH-RLHF, synthetic files ---------------------------------------------------------------
def test_hh_skip_reasons_are_counted(tmp_path):
    good = {"chosen": _hh("hi", "hello"), "rejected": _hh("hi", "go away")}
    rows = [
        good,
        {"chosen": "\n\nHuman: no reply", "rejected": _hh("x", "y")},
        {"chosen": _hh("a", "b", "c"), "rejected": _hh("a", "d")},
        {"chosen": _hh("q", "   "), "rejected": _hh("q", "r")},
        {"chosen": _hh("q", "r") + "\n\nHuman: more?", "rejected": _hh("q", "s")},
        {"chosen": _hh("q", "same"), "rejected": _hh("q", "same")},
    ]
    items, report = load_hh_rlhf(_jsonl(tmp_path / "hh.jsonl", rows))
    assert [(it.prompt, it.responses) for it in items] == [
        ("\n\nHuman: hi\n\nAssistant:", ["hello", "go away"])
    ]
    assert report.skipped == {
        "no_assistant_turn": 1,
        "prompt_mismatch": 1,
        "empty_response": 1,
        "human_turn_in_response": 1,
        "identical_responses": 1,
    }
    assert report.examples["prompt_mismatch"] == [3]


def test_hh_gz_and_plain_agree(tmp_path):
    rows = [{"chosen": _hh("a", " x"), "rejected": _hh("a", "y ")}]
    plain, _ = load_hh_rlhf(_jsonl(tmp_path / "a.jsonl", rows))
    packed, _ = load_hh_rlhf(_jsonl(tmp_path / "a.jsonl.gz", rows, gz=True))
    assert plain == packed
    # Only leading whitespace goes; trailing whitespace is the reply's own.
    assert packed[0].responses == ["x", "y "]


def test_hh_malformed_json_names_file_and_line(tmp_path):
    good = json.dumps({"chosen": _hh("a", "b"), "rejected": _hh("a", "c")})
    path = _jsonl(tmp_path / "bad.jsonl", [good, "", '{"chosen": "oops"'])
    with pytest.raises(DataFormatError) as e:
        load_hh_rlhf(path)
    assert e.value.line == 3 and e.value.path == path
    assert str(path) in str(e.value) and "line 3" in str(e.value)


def test_hh_missing_field(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"chosen": _hh("a", "b")}])
    with pytest.raises(DataFormatError, match="missing") as e:
        load_hh_rlhf(path)
    assert (e.value.line, e.value.field) == (1, "rejected")


def test_hh_mistyped_field(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"chosen": [_hh("a", "b")], "rejected": _hh("a", "c")}])
    with pytest.raises(DataFormatError, match="expected a string, found array") as e:
        load_hh_rlhf(path)
    assert e.value.field == "chosen" and "line 1" in str(e.value)


def test_hh_record_not_an_object(tmp_path):
    good = {"chosen": _hh("a", "b"), "rejected": _hh("a", "c")}
    with pytest.raises(DataFormatError, match="JSON object, found array") as e:
        load_hh_rlhf(_jsonl(tmp_path / "l.jsonl", [good, '["chosen", "rejected"]']))
    assert e.value.line == 2


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match="no records") as e:
        load_hh_rlhf(path)
    assert e.value.path == path and str(path) in str(e.value)


def test_hh_all_records_skipped_is_an_error(tmp_path):
    rows = [{"chosen": _hh("a", "b"), "rejected": _hh("a", "b")}]
    with pytest.raises(DataFormatError, match="no usable record.*identical_responses"):
        load_hh_rlhf(_jsonl(tmp_path / "same.jsonl", rows))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_hh_rlhf(tmp_path / "nope.jsonl")
    corrupt = tmp_path / "c.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"a": 1}\n')[:-6])
    with pytest.raises(DataFormatError, match="gzip"):
        load_hh_rlhf(corrupt)


def test_split_transcript():
    assert split_transcript(_hh("q", "a", "  b")) == (_hh("q", "a") + "\n\nAssistant:", "b")
    assert split_transcript("\n\nHuman: q") is None


def test_data_format_error_is_a_value_error_and_pickles():
    err = DataFormatError("f.json", "bad", record=2, field="scores[1]")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.record, back.field, str(back)) == (
        Path("f.json"),
        2,
        "scores[1]",
        "f.json, record [2], field 'scores[1]': bad",
    )


# ---- ShareGPT -------------------------------------------------------------------------------
def test_sharegpt_real_demo():
    items = load_sharegpt(_need(DPO_DEMO))
    raw = json.loads(DPO_DEMO.read_text(encoding="utf-8"))
    assert len(items) == len(raw) == 300
    for it, rec in zip(items, raw):
        last = rec["conversations"][-1]
        assert last["from"] == "human"
        assert it.prompt.endswith("\n\nHuman: " + last["value"] + "\n\nAssistant:")
        assert it.responses == [rec["chosen"]["value"].lstrip(), rec["rejected"]["value"].lstrip()]
        assert it.scores == [1.0, 0.0]
    assert sum(it.prompt.startswith("\n\nSystem: ") for it in items) == 80
    assert sum(it.prompt.count("\n\nAssistant: ") == 0 for it in items) == 194


def _dpo(conv, chosen="good", rejected="bad"):
    return {
        "conversations": [{"from": r, "value": v} for r, v in conv],
        "chosen": {"from": "gpt", "value": chosen},
        "rejected": {"from": "gpt", "value": rejected},
    }


def test_sharegpt_rendering_and_custom_template(tmp_path):
    path = tmp_path / "d.json"
    conv = [("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"), ("human", "2+2?")]
    path.write_text(json.dumps([_dpo(conv, " 4", "5")]))
    (it,) = load_sharegpt(path)
    assert it.prompt == (
        "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant:"
    )
    assert it.responses == ["4", "5"]
    chatml = ChatTemplate(
        prefixes={"system": "<s>", "human": "<u>", "gpt": "<a>"},
        user_roles=("human",),
        response_roles=("gpt",),
        generation_prompt="<a>",
    )
    (it2,) = load_sharegpt(path, chatml)
    assert it2.prompt == "<s>Be brief.<u>Hi<a>Hello<u>2+2?<a>"
    assert HH_TEMPLATE.generation_prompt == "\n\nAssistant:"
    with pytest.raises(ValueError, match="no prefix"):
        ChatTemplate(prefixes={"human": "H"}, user_roles=("human",), response_roles=("gpt",))


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (_dpo([("human", "q"), ("gpt", "a")]), "conversations[1].from", "end on a human"),
        (_dpo([("human", "q"), ("tool", "x"), ("human", "q")]), "conversations[1].from", "role"),
        (_dpo([]), "conversations", "at least one turn"),
        ({**_dpo([("human", "q")]), "chosen": ["good"]}, "chosen", "found array"),
        ({**_dpo([("human", "q")]), "rejected": {"from": "gpt"}}, "rejected.value", "missing"),
        (
            {**_dpo([("human", "q")]), "chosen": {"from": "human", "value": "x"}},
            "chosen.from",
            "role",
        ),
        (_dpo([("human", "q")], chosen="  "), "chosen.value", "non-empty"),
        (_dpo([("human", "q")], chosen="same", rejected="same"), "rejected", "different"),
    ],
)
def test_sharegpt_broken_records(tmp_path, record, field, message):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_dpo([("human", "fine")]), record]))
    with pytest.raises(DataFormatError, match=message) as e:
        load_sharegpt(path)
    assert (e.value.record, e.value.field) == (1, field)
    assert "record [1]" in str(e.value) and str(path) in str(e.value)


# ---- APO comparison format ------------------------------------------------------------------
def _cmp(query, responses, scores, **extra):
    return {"text": [f"{query}<sep>{r}" for r in responses], "scores": scores, **extra}


def test_comparisons_load_json_and_jsonl(tmp_path):
    rows = [
        _cmp("\n\nHuman: q\n\nAssistant:", [" a", " b"], [1, 0], query_id=7, type="apo"),
        _cmp("p2", ["x", "y", "z"], [0.5, 2.0, -1.0], query_id="k"),
    ]
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps(rows))
    items = load_comparisons(as_json)
    assert items == load_comparisons(_jsonl(tmp_path / "c.jsonl", rows))
    assert items[0] == ListwiseItem("\n\nHuman: q\n\nAssistant:", [" a", " b"], [1.0, 0.0])
    assert items[1].scores == [0.5, 2.0, -1.0]


def test_comparisons_custom_separator(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"text": ["q|||a", "q|||b"], "scores": [1, 0]}]))
    assert load_comparisons(path, sep="|||")[0].responses == ["a", "b"]
    with pytest.raises(DataFormatError, match="exactly once"):
        load_comparisons(path)
    with pytest.raises(ValueError, match="separator"):
        load_comparisons(path, sep="")


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (
            _cmp("q", ["a", "b"], [1.0, float("nan")]),
            "scores[1]",
            "finite number, found number nan",
        ),
        (_cmp("q", ["a", "b"], [float("inf"), 0.0]), "scores[0]", "finite number"),
        (_cmp("q", ["a", "b"], [1.0, True]), "scores[1]", "found boolean"),
        (_cmp("q", ["a", "b"], [1.0, "0"]), "scores[1]", "found string"),
        (_cmp("q", ["a", "b", "c"], [1.0, 0.0]), "scores", "expected 3 scores"),
        (_cmp("q", ["a"], [1.0]), "text", "at least 2"),
        ({"text": ["q<sep>a", "r<sep>b"], "scores": [1, 0]}, "text[1]", "same query"),
        ({"text": ["q<sep>a", "q b"], "scores": [1, 0]}, "text[1]", "0 times"),
        ({"text": ["q<sep>a<sep>b", "q<sep>c"], "scores": [1, 0]}, "text[0]", "2 times"),
        ({"text": ["q<sep>a", "q<sep> "], "scores": [1, 0]}, "text[1]", "non-empty response"),
        ({"text": [" <sep>a", " <sep>b"], "scores": [1, 0]}, "text[0]", "non-empty query"),
        ({"text": ["q<sep>a", 3], "scores": [1, 0]}, "text[1]", "found number 3"),
        ({"scores": [1, 0]}, "text", "missing"),
        ({"text": "q<sep>a", "scores": [1, 0]}, "text", "expected an array"),
        (_cmp("q", ["a", "b"], [1, 0], query_id=[1]), "query_id", "string or integer"),
    ],
)
def test_comparisons_broken_records(tmp_path, record, field, message):
    path = tmp_path / "c.json"
    # json.dumps writes NaN/Infinity literals, as Python-made files do; the loader must catch them.
    path.write_text(json.dumps([_cmp("ok", ["a", "b"], [1, 0]), record]))
    with pytest.raises(DataFormatError, match=message) as e:
        load_comparisons(path)
    assert (e.value.record, e.value.field) == (1, field)
    assert str(path) in str(e.value) and "record [1]" in str(e.value)


def test_comparisons_malformed_json_array_names_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[\n  {"text": ["q<sep>a", "q<sep>b"], "scores": [1, 0]},\n  {"text": [}\n]')
    with pytest.raises(DataFormatError, match="malformed JSON") as e:
        load_comparisons(path)
    assert e.value.line == 3


def test_comparisons_top_level_object_is_an_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"text": ["q<sep>a", "q<sep>b"],\n "scores": [1, 0]}')
    with pytest.raises(DataFormatError, match="malformed JSON") as e:
        load_comparisons(path)
    assert e.value.line == 1


@pytest.mark.parametrize("name", ["c.json", "c.jsonl", "c.json.gz", "c.jsonl.gz"])
def test_comparisons_round_trip(tmp_path, name):
    items = [
        ListwiseItem("\n\nHuman: hé?\n\nAssistant:", [" a\nb", " c"], [1.0, 0.0]),
        ListwiseItem("p", ["x", "y", "z"], [0.25, 3.0, -2.0]),
    ]
    path = tmp_path / name
    write_comparisons(path, items, query_ids=["a", 2])
    assert load_comparisons(path) == items
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    if ".jsonl" in name:
        rows = [json.loads(line) for line in raw.decode().splitlines()]
    else:
        rows = json.loads(raw)
    assert rows[0]["text"][0] == "\n\nHuman: hé?\n\nAssistant:<sep> a\nb"
    assert rows[1]["query_id"] == 2 and rows[1]["scores"] == [0.25, 3.0, -2.0]


def test_write_comparisons_refuses_what_it_could_not_read(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(DataFormatError, match="2 times") as e:
        write_comparisons(path, [ListwiseItem("q<sep>", ["a", "b"], [1.0, 0.0])])
    assert e.value.record == 0
    with pytest.raises(DataFormatError, match="finite"):
        write_comparisons(path, [ListwiseItem("q", ["a", "b"], [1.0, float("nan")])])
    with pytest.raises(DataFormatError, match="2 responses but 3 scores"):
        write_comparisons(path, [ListwiseItem("q", ["a", "b"], [1.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="query_ids"):
        write_comparisons(path, [ListwiseItem("q", ["a", "b"], [1.0, 0.0])], query_ids=[1, 2])
    assert not path.exists()


# ---- golden and sample files ----------------------------------------------------------------
def test_golden_load_write_round_trip(tmp_path):
    golden = {"q1": "answer one", "7": " answer\ntwo"}
    path = tmp_path / "golden.jsonl"
    write_golden(path, golden)
    assert load_golden(path) == golden
    as_json = tmp_path / "golden.json"
    as_json.write_text(json.dumps([{"query_id": 3, "golden": "g", "query": "extra keys ok"}]))
    assert load_golden(as_json) == {"3": "g"}


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        (
            [{"query_id": "a", "golden": "x"}, {"query_id": "a", "golden": "y"}],
            "query_id",
            "line 1",
        ),
        (
            [{"query_id": 1, "golden": "x"}, {"query_id": "1", "golden": "y"}],
            "query_id",
            "duplicate",
        ),
        (
            [{"query_id": "a", "golden": "x"}, {"query_id": "b", "golden": " "}],
            "golden",
            "non-empty",
        ),
        ([{"query_id": "a", "golden": "x"}, {"query_id": None, "golden": "y"}], "query_id", "null"),
        ([{"query_id": "a", "golden": "x"}, {"query_id": "b"}], "golden", "missing"),
    ],
)
def test_golden_broken(tmp_path, rows, field, message):
    with pytest.raises(DataFormatError, match=message) as e:
        load_golden(_jsonl(tmp_path / "g.jsonl", rows))
    assert (e.value.line, e.value.field) == (2, field)


def test_samples_round_trip(tmp_path):
    records = [
        {"query_id": "0", "query": "\n\nHuman: a\n\nAssistant:", "samples": [" x", " y", "z"]},
        {"query_id": "b", "query": "q", "samples": ["1", "2", "3"]},
    ]
    for name in ("s.json", "s.jsonl.gz"):
        write_samples(tmp_path / name, records)
        assert load_samples(tmp_path / name, k=3) == records
    row = json.loads((tmp_path / "s.json").read_text())[0]
    assert row == {
        "query_id": "0",
        "query": records[0]["query"],
        "sample_0": " x",
        "sample_1": " y",
        "sample_2": "z",
    }
    # Integer ids are accepted and come back as strings.
    write_samples(tmp_path / "i.json", [{"query_id": 5, "query": "q", "samples": ["s"]}])
    assert load_samples(tmp_path / "i.json")[0]["query_id"] == "5"


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (
            {"query_id": "b", "query": "q", "sample_0": "x", "sample_2": "z"},
            "sample_1",
            "without gaps",
        ),
        ({"query_id": "b", "query": "q"}, "sample_0", "missing"),
        ({"query_id": "b", "query": "q", "sample_0": ""}, "sample_0", "non-empty"),
        ({"query_id": "b", "query": "q", "sample_0": 1}, "sample_0", "found number"),
        ({"query_id": "a", "query": "q", "sample_0": "x"}, "query_id", "duplicate"),
        ({"query_id": "b", "sample_0": "x"}, "query", "missing"),
    ],
)
def test_samples_broken(tmp_path, row, field, message):
    good = {"query_id": "a", "query": "q", "sample_0": "x"}
    with pytest.raises(DataFormatError, match=message) as e:
        load_samples(_jsonl(tmp_path / "s.jsonl", [good, row]))
    assert (e.value.line, e.value.field) == (2, field)


def test_samples_k_is_enforced(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", [{"query_id": "a", "query": "q", "sample_0": "x"}])
    assert len(load_samples(path, k=1)) == 1
    with pytest.raises(DataFormatError, match="expected 4 samples"):
        load_samples(path, k=4)


def test_write_samples_refuses_bad_records(tmp_path):
    path = tmp_path / "s.json"
    with pytest.raises(DataFormatError, match="at least one sample"):
        write_samples(path, [{"query_id": "a", "query": "q", "samples": []}])
    with pytest.raises(DataFormatError, match="duplicate"):
        write_samples(path, [{"query_id": "a", "query": "q", "samples": ["x"]}] * 2)
    with pytest.raises(DataFormatError, match="no sample records"):
        write_samples(path, [])
    assert not path.exists()


# ---- splits and golden answers from chosen responses ----------------------------------------
def _items(n: int, dup: int = 0) -> list[ListwiseItem]:
    items = [ListwiseItem(f"p{i}", [f"a{i}", f"b{i}"], [1.0, 0.0]) for i in range(n)]
    # Extra items reusing prompts, with a different chosen response.
    return items + [ListwiseItem(f"p{i}", [f"c{i}", f"a{i}"], [0.0, 1.0]) for i in range(dup)]


def test_split_deterministic_disjoint_and_sized():
    items = _items(100, dup=20)
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    a = split_prompts(items, fractions, seed=0)
    assert a == split_prompts(items, fractions, seed=0)
    assert a != split_prompts(items, fractions, seed=1)
    prompts = {k: {it.prompt for it in v} for k, v in a.items()}
    assert [len(prompts[k]) for k in fractions] == [70, 20, 10]
    assert set.union(*prompts.values()) == {f"p{i}" for i in range(100)}
    assert sum(len(p) for p in prompts.values()) == 100
    assert sum(len(v) for v in a.values()) == 120
    # Input order is kept inside a part ...
    for part in a.values():
        assert part == [it for it in items if it in part]
    # ... and the split does not depend on it.
    b = split_prompts(items[::-1], fractions, seed=0)
    assert {k: {it.prompt for it in v} for k, v in b.items()} == prompts


def test_split_of_prompt_strings_leaves_the_rest_out():
    prompts = [f"q{i}" for i in range(10)] * 2
    parts = split_prompts(prompts, {"rm": 0.3, "policy": 0.5}, seed=5)
    assert len(set(parts["rm"])) == 3 and len(parts["rm"]) == 6
    assert len(set(parts["policy"])) == 5 and len(parts["policy"]) == 10
    assert not set(parts["rm"]) & set(parts["policy"])


@pytest.mark.parametrize(
    "fractions",
    [{}, {"a": -0.1}, {"a": 0.6, "b": 0.5}, {"a": float("nan")}, {"a": True}, {"a": "0.5"}],
)
def test_split_fractions_are_validated(fractions):
    with pytest.raises(ValueError, match="fraction"):
        split_prompts(["a", "b"], fractions, seed=0)


def test_split_rejects_bad_elements_and_seed():
    with pytest.raises(TypeError, match="element 1"):
        split_prompts(["a", 3], {"x": 1.0}, seed=0)
    with pytest.raises(ValueError, match="seed"):
        split_prompts(["a"], {"x": 1.0}, seed="0")


def test_golden_from_chosen():
    items = _items(3, dup=2)
    assert golden_from_chosen(items) == {"p0": "a0", "p1": "a1", "p2": "a2"}
    listwise = [ListwiseItem("q", ["lo", "hi", "mid"], [0.1, 0.9, 0.5])]
    assert golden_from_chosen(listwise) == {"q": "hi"}
    with pytest.raises(ValueError, match="tied"):
        golden_from_chosen([ListwiseItem("q", ["a", "b"], [1.0, 1.0])])
