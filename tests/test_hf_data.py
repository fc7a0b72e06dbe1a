"""Local Hugging Face datasets in TRL's preference formats (save_to_disk directories, parquet,
JSON Lines through `datasets`), chat templates rendering conversational prompts, bad records
named by file, record and field, and a 1-round game on a TRL dataset made here."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from apo.data.adapters import DataFormatError, load_preference, load_sharegpt
from apo.data.collate import Encoder
from apo.data.datamodule import GameDataModule
from apo.data.game_data import GameData, ListwiseItem
from apo.data.sources import build_game_data
from apo.data.text_tokenizer import train_bpe_tokenizer
from apo.game import GameLoop
from apo.records import read_jsonl
from apo.warm_cache import warm_start_key
from tests.conftest import compose_cfg
from tests.test_file_game import TINY, _check_no_oracle_run

STANDARD = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Grass is", "chosen": " green.", "rejected": " purple."},
]
CONVERSATIONAL = [
    {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What color is the sky?"},
        ],
        "chosen": [{"role": "assistant", "content": "It is blue."}],
        "rejected": [{"role": "assistant", "content": "It is green."}],
    },
    {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Color of grass?"},
        ],
        "chosen": [{"role": "assistant", "content": "Green."}],
        "rejected": [{"role": "assistant", "content": "Purple."}],
    },
]
#: the HH-style text of CONVERSATIONAL's prompts: the fallback rendering
CONVERSATIONAL_TEXT = [
    "\n\nSystem: Be brief.\n\nHuman: What color is the sky?\n\nAssistant:",
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Color of grass?\n\nAssistant:",
]
#: a chat template in the style of ChatML, opening with the bos token's text
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _standard_items() -> list[ListwiseItem]:
    return [ListwiseItem(r["prompt"], [r["chosen"], r["rejected"]], [1.0, 0.0]) for r in STANDARD]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- where the rows come from ----------------------------------------------------------------
def test_standard_pairs_from_every_local_layout(tmp_path):
    """save_to_disk, parquet and JSON Lines (plain and gzipped) give the same items, texts kept
    exactly (TRL's completions start with their space)."""
    ds = Dataset.from_list(STANDARD)
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    ds.to_json(str(tmp_path / "pairs.jsonl"))
    (tmp_path / "pairs.jsonl.gz").write_bytes(
        gzip.compress((tmp_path / "pairs.jsonl").read_bytes())
    )
    (tmp_path / "pairs.json").write_text(json.dumps(STANDARD))
    for name in ("disk", "pairs.parquet", "pairs.jsonl", "pairs.jsonl.gz", "pairs.json"):
        assert load_preference(tmp_path / name, None, "auto") == _standard_items(), name


def test_dataset_dict_split_is_picked_by_config(tmp_path):
    d = tmp_path / "dd"
    DatasetDict(
        {"train": Dataset.from_list(STANDARD), "test": Dataset.from_list(STANDARD[:1])}
    ).save_to_disk(str(d))
    assert load_preference(d, "test", "auto") == _standard_items()[:1]
    with pytest.raises(DataFormatError, match=r"splits \['train', 'test'\]; set data.split"):
        load_preference(d, None, "auto")
    with pytest.raises(DataFormatError, match=r"data.split='dev' is not a split"):
        load_preference(d, "dev", "auto")
    # a DatasetDict of one split needs no data.split; a file has none to pick
    DatasetDict({"train": Dataset.from_list(STANDARD)}).save_to_disk(str(tmp_path / "one"))
    assert load_preference(tmp_path / "one", None, "auto") == _standard_items()
    with pytest.raises(DataFormatError, match="a file has no splits; data.split must be null"):
        load_preference(_jsonl(tmp_path / "p.jsonl", STANDARD), "train", "auto")
    # errors in a split name the split's own directory
    bad = STANDARD + [{"prompt": "x", "chosen": "same", "rejected": "same"}]
    DatasetDict({"train": Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataFormatError, match=r"bad/train, record \[2\], field 'rejected'"):
        load_preference(tmp_path / "bad", "train", "auto")


def test_only_existing_local_paths_are_read(tmp_path):
    cfg = compose_cfg(["data=preference", "data.path=trl-lib/ultrafeedback_binarized"])
    with pytest.raises(
        DataFormatError,
        match=r"ultrafeedback_binarized: no such file or directory \(data.path\).*Hub",
    ):
        build_game_data(cfg, None)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFormatError, match="not one written by Dataset.save_to_disk"):
        load_preference(tmp_path / "plain", None, "auto")
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataFormatError, match=r"pairs\.csv: unknown file type"):
        load_preference(tmp_path / "pairs.csv", None, "auto")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(STANDARD[0]) + "\n" + '{"prompt": "a", "chosen": "b"\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: malformed JSON"):
        load_preference(bad, None, "auto")
    no_rejected = _jsonl(tmp_path / "nr.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataFormatError, match=r"nr\.jsonl, field 'rejected': missing column"):
        load_preference(no_rejected, None, "auto")
    with pytest.raises(ValueError, match="data.format must be one of"):
        load_preference(no_rejected, None, "sharegpt")


# ---- TRL's formats ---------------------------------------------------------------------------
def test_conversational_prompts_keep_their_messages(tmp_path):
    Dataset.from_list(CONVERSATIONAL).save_to_disk(str(tmp_path / "conv"))
    items = load_preference(tmp_path / "conv", None, "auto")
    assert [it.prompt for it in items] == CONVERSATIONAL_TEXT
    assert [it.responses for it in items] == [
        ["It is blue.", "It is green."],
        ["Green.", "Purple."],
    ]
    assert [it.messages for it in items] == [r["prompt"] for r in CONVERSATIONAL]
    # the implicit-prompt form (whole conversations), the `messages` form with one message
    # object per reply, and TRL's *-trl-style layout (a string prompt beside whole
    # conversations) give the same items
    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
        for r in CONVERSATIONAL
    ]
    messages = [
        {"messages": r["prompt"], "chosen": r["chosen"][0], "rejected": r["rejected"][0]}
        for r in CONVERSATIONAL
    ]
    trl_style = [
        {"prompt": r["prompt"][-1]["content"], **i} for r, i in zip(CONVERSATIONAL, implicit)
    ]
    for name, rows in (("implicit", implicit), ("messages", messages), ("trl_style", trl_style)):
        got = load_preference(_jsonl(tmp_path / f"{name}.jsonl", rows), None, "conversational")
        assert got == items and [it.messages for it in got] == [it.messages for it in items], name


def test_standard_implicit_prompt_is_the_shared_prefix(tmp_path):
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
    ]
    items = load_preference(_jsonl(tmp_path / "implicit.jsonl", rows), None, "standard")
    assert items == [
        ListwiseItem("The sky is", [" blue.", " green."], [1.0, 0.0]),
        ListwiseItem("Q: 2+2? A:", [" 4", " 5"], [1.0, 0.0]),
    ]
    assert all(it.messages is None for it in items)


BAD_RECORDS = [
    # (format, the second record, field, message)
    ("auto", {"prompt": "a", "rejected": "b"}, "chosen", "missing; expected a string"),
    (
        "auto",
        {"prompt": "a", "chosen": 3, "rejected": "b"},
        "chosen",
        "expected a string.*number 3",
    ),
    ("auto", {"prompt": "a", "chosen": "  ", "rejected": "b"}, "chosen", "non-empty reply"),
    ("auto", {"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt", "non-empty prompt"),
    ("auto", {"prompt": "a", "chosen": "b", "rejected": "b"}, "rejected", "different chosen"),
    ("auto", {"chosen": "abc", "rejected": "abd"}, "prompt", "share no prompt"),
    (
        "standard",
        CONVERSATIONAL[0],
        "chosen",
        r"expected a string \(standard format\), found array",
    ),
    ("conversational", STANDARD[0], "chosen", r"expected a list of messages.*found string"),
    (
        "auto",
        {**CONVERSATIONAL[0], "rejected": [{"role": "assistant", "content": ""}]},
        "rejected[0].content",
        "non-empty reply",
    ),
    (
        "auto",
        {**CONVERSATIONAL[0], "chosen": [{"role": "user", "content": "hm"}]},
        "chosen[0].role",
        "expected an assistant reply, found role 'user'",
    ),
    (
        "auto",
        {**CONVERSATIONAL[0], "prompt": [{"role": "tool", "content": "{}"}]},
        "prompt[0].role",
        r"expected a role in \['system', 'user', 'assistant'\], found 'tool'",
    ),
    (
        "auto",
        {**CONVERSATIONAL[0], "prompt": CONVERSATIONAL[1]["prompt"][:2]},
        "prompt[1].role",
        "end on a user turn, found 'assistant'",
    ),
    (
        "auto",
        {**CONVERSATIONAL[0], "prompt": [{"role": "user"}]},
        "prompt[0].content",
        "missing; expected a string",
    ),
    (
        "auto",
        {**CONVERSATIONAL[0], "chosen": CONVERSATIONAL[0]["chosen"] * 2},
        "chosen",
        "expected one assistant message, found 2",
    ),
    (
        "auto",
        {
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "rejected": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "c"}],
        },
        "rejected[0]",
        "the same prompt turns as chosen",
    ),
    (
        "auto",
        {
            "chosen": [{"role": "assistant", "content": "b"}],
            "rejected": [{"role": "assistant", "content": "c"}],
        },
        "chosen",
        "whole conversation",
    ),
]


@pytest.mark.parametrize(("fmt", "record", "field", "message"), BAD_RECORDS)
def test_bad_records_name_file_record_and_field(tmp_path, fmt, record, field, message):
    """Each bad record follows a good one in a JSON Lines file read through `datasets`."""
    good = CONVERSATIONAL[1] if fmt == "conversational" else STANDARD[0]
    path = _jsonl(tmp_path / "pairs.jsonl", [good, record])
    where = rf"pairs\.jsonl, record \[1\], field {re.escape(repr(field))}"
    with pytest.raises(DataFormatError, match=rf"{where}: .*{message}"):
        load_preference(path, None, fmt)


def test_sharegpt_items_keep_their_conversation(tmp_path):
    rec = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What color is the sky?"},
        ],
        "chosen": {"from": "gpt", "value": "It is blue."},
        "rejected": {"from": "gpt", "value": "It is green."},
    }
    (tmp_path / "dpo.json").write_text(json.dumps([rec]))
    (item,) = load_sharegpt(tmp_path / "dpo.json")
    assert item.prompt == CONVERSATIONAL_TEXT[0]
    assert item.messages == CONVERSATIONAL[0]["prompt"]


# ---- chat templates --------------------------------------------------------------------------
def _tokenizer(tmp_path: Path, template: str | None):
    """A byte-level BPE with <bos>/<eos>/<pad> and `template`, saved and loaded back as a
    checkpoint's tokenizer is."""
    texts = [t for r in CONVERSATIONAL for m in r["prompt"] + r["chosen"] for t in (m["content"],)]
    tok = train_bpe_tokenizer(texts * 20 + ["<|user|><|assistant|><|system|>"] * 20, vocab_size=300)
    if template is not None:
        tok.chat_template = template
    d = tmp_path / f"tok_{template is not None}"
    tok.save_pretrained(str(d))
    return AutoTokenizer.from_pretrained(str(d))


def test_chat_template_renders_conversational_prompts(tmp_path):
    tok = _tokenizer(tmp_path, TEMPLATE)
    messages = CONVERSATIONAL[0]["prompt"]
    rendered = "<|system|>Be brief.\n<|user|>What color is the sky?\n<|assistant|>"
    enc = Encoder(tok, 64, 96, prompt_template="Q: {prompt} A:", chat_template="auto")
    assert enc.render(CONVERSATIONAL_TEXT[0], messages) == rendered  # the template's bos dropped
    ids = enc.prompt(CONVERSATIONAL_TEXT[0], messages)
    assert ids == [tok.bos_token_id] + tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and tok.decode(ids[1:]) == rendered
    # auto: a text prompt (no messages) keeps the hand-written template
    assert enc.render("The sky is") == "Q: The sky is A:"
    # true: every prompt, a text prompt as one user turn; false: never
    every = Encoder(tok, 64, 96, chat_template=True)
    assert every.render("The sky is") == "<|user|>The sky is\n<|assistant|>"
    never = Encoder(tok, 64, 96, chat_template=False)
    assert never.render(CONVERSATIONAL_TEXT[0], messages) == CONVERSATIONAL_TEXT[0]
    # a tokenizer without a chat template: auto falls back, true is an error
    plain = _tokenizer(tmp_path, None)
    fallback = Encoder(plain, 64, 96, chat_template="auto")
    assert fallback.render(CONVERSATIONAL_TEXT[0], messages) == CONVERSATIONAL_TEXT[0]
    with pytest.raises(
        ValueError, match="chat_template=true, but the tokenizer has no chat template"
    ):
        Encoder(plain, 64, 96, chat_template=True)
    with pytest.raises(ValueError, match="chat_template must be auto, true or false"):
        Encoder(tok, 64, 96, chat_template="yes")


def test_each_player_renders_the_messages_with_its_own_template(tmp_path):
    items = [
        ListwiseItem(
            t, [r["chosen"][0]["content"], r["rejected"][0]["content"]], [1.0, 0.0], r["prompt"]
        )
        for t, r in zip(CONVERSATIONAL_TEXT, CONVERSATIONAL)
    ]
    data = GameData(
        human_train=items,
        policy_prompts=CONVERSATIONAL_TEXT,
        messages={it.prompt: it.messages for it in items},
    )
    tok, plain = _tokenizer(tmp_path, TEMPLATE), _tokenizer(tmp_path, None)
    sizes = dict.fromkeys(("sft", "policy", "rm", "apo", "predict"), 2)
    fmt = {"policy": {"chat_template": "auto"}, "rm": {"chat_template": "auto"}}
    dm = GameDataModule(data, tok, sizes, 64, 96, seed=0, rm_tokenizer=plain, prompt_format=fmt)
    text = CONVERSATIONAL_TEXT[1]
    rendered = "<|user|>Hi\n<|assistant|>Hello!\n<|user|>Color of grass?\n<|assistant|>"
    assert tok.decode(dm.prompt_ids(text, "policy")[1:]) == rendered
    assert plain.decode(dm.prompt_ids(text, "rm")[1:]) == text  # no template: the HH text
    # the generation prompts and the RM's human items read the same rendering
    batch = next(iter(dm.prompt_loader(CONVERSATIONAL_TEXT, k=1)))
    assert tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()][1:]) == rendered
    rm_item = dm.human_items(data.human_train, "rm")[1]
    assert rm_item["seqs"][0][: rm_item["prompt_len"]] == dm.prompt_ids(text, "rm")
    bad = {"rm": {"chat_template": True}}
    with pytest.raises(ValueError, match="^rm: chat_template=true"):
        GameDataModule(data, tok, sizes, 64, 96, seed=0, rm_tokenizer=plain, prompt_format=bad)


def test_warm_start_key_sees_the_chat_template_switch():
    """`auto` (the default) keeps older caches' keys; `true` and `false` render differently
    from it on conversational data, so they get their own warm starts."""
    base = warm_start_key(compose_cfg(["experiment=tiny"]))
    assert warm_start_key(compose_cfg(["experiment=tiny", "rm.chat_template=auto"])) == base
    keys = {
        warm_start_key(compose_cfg(["experiment=tiny", o]))
        for o in (
            "policy.chat_template=false",
            "policy.chat_template=true",
            "rm.chat_template=false",
        )
    }
    assert len(keys) == 3 and base not in keys


# ---- a game ----------------------------------------------------------------------------------
def _sorting_conversations(n: int) -> list[dict]:
    """`n` distinct TRL conversational pairs: sort some digits (chosen right, rejected not)."""
    rows = []
    for i in range(n):
        digits = f"{(i * 7919) % 100000:05d}"
        turns = [{"role": "user", "content": f"Sort {digits}"}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Answer with digits."}, *turns]
        good = "".join(sorted(digits))
        bad = good[::-1] if good[::-1] != good else good + "0"
        rows.append(
            {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        )
    return rows


def _chat_checkpoint(d: Path, texts: list[str]) -> Path:
    """A tiny random Llama whose tokenizer carries TEMPLATE."""
    tok = train_bpe_tokenizer(texts + ["<|user|><|assistant|><|system|>"] * 20, vocab_size=300)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_game_one_round_on_trl_data_through_the_chat_template(tmp_path):
    """A DatasetDict in TRL's conversational format, players from a checkpoint whose tokenizer
    has a chat template: every prompt the players read is the template's rendering."""
    rows = _sorting_conversations(220)
    DatasetDict(
        {"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:4])}
    ).save_to_disk(str(tmp_path / "trl"))
    texts = [m["content"] for r in rows for m in r["prompt"] + r["chosen"] + r["rejected"]]
    ckpt = _chat_checkpoint(tmp_path / "ckpt", texts)
    run = tmp_path / "run"
    cfg = compose_cfg(
        [
            "data=preference",
            *TINY,
            "data.sizes.n_test_rm=16",
            f"data.path={tmp_path / 'trl'}",
            "data.split=train",
            f"policy.model_name_or_path={ckpt}",
            f"rm.model_name_or_path={ckpt}",
        ],
        run_dir=run,
    )
    loop = GameLoop(cfg)
    tok, dm = loop.players.tokenizer, loop.dm
    prompt = dm.data.policy_prompts[0]
    turns = dm.data.messages[prompt]
    rendered = "".join(f"<|{m['role']}|>{m['content']}\n" for m in turns) + "<|assistant|>"
    assert prompt.endswith("\n\nAssistant:")  # the text stays HH-style, the key of the files
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    # bos, then the rendering's last tokens (prompts are cut on the left to data.max_prompt_len)
    assert dm.prompt_ids(prompt) == [tok.bos_token_id] + ids[-(cfg.data.max_prompt_len - 1) :]
    assert dm.prompt_ids(prompt, "rm") == dm.prompt_ids(prompt)
    loop.run()
    summary = _check_no_oracle_run(run)
    assert summary["data"]["source"] == "preference"
    assert summary["data"]["records"] == summary["data"]["conversational"] == 220
    samples = read_jsonl(run / "rounds" / "round_01" / "samples.jsonl")
    assert {s["prompt"] for s in samples} <= set(dm.data.messages)


def test_game_one_round_on_standard_parquet_with_tiny_players(tmp_path):
    """TRL's standard format in a parquet file, tiny players with the data-trained tokenizer
    (no chat template): prompts are the texts as written."""
    rows = [
        {
            "prompt": r["prompt"][-1]["content"] + " =",
            "chosen": " " + r["chosen"][0]["content"],
            "rejected": " " + r["rejected"][0]["content"],
        }
        for r in _sorting_conversations(220)
    ]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    run = tmp_path / "run"
    path = tmp_path / "pairs.parquet"
    cfg = compose_cfg(
        ["data=preference", *TINY, "data.sizes.n_test_rm=16", f"data.path={path}"], run
    )
    loop = GameLoop(cfg)
    assert not loop.dm.data.messages and loop.dm.data.policy_prompts[0].startswith("Sort ")
    loop.run()
    summary = _check_no_oracle_run(run)
    assert summary["data"]["records"] == 220 and summary["data"]["conversational"] == 0
