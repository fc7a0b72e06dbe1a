"""Players from local Hugging Face checkpoints (by config alone), their tokenizers, LoRA, export.

The checkpoints are built here: random tiny Llama / GPT-2 weights with real config files and
byte-level BPE tokenizers trained with `tokenizers` on the sorting task's texts.
"""

from __future__ import annotations

import json
import logging
import random
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from apo.data.collate import Encoder
from apo.game import GameLoop
from apo.judges import ORACLE_KEYS
from apo.modules.backbones import checkpoint_dir, load_sequence_classifier, load_tokenizer
from apo.train import quiet_libraries
from tests.conftest import compose_cfg, sort_task


def _texts(n: int = 400) -> list[str]:
    task, rng = sort_task(), random.Random(0)
    prompts = [task.sample_prompt(rng) for _ in range(n)]
    return [p + task.golden(p) for p in prompts] + ["Human: Assistant:"] * 20


def bpe_tokenizer(vocab_size: int, pad: bool, special: tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on task texts; `special` = (bos, eos[, pad])."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_texts(), trainer=trainer)
    extra = {"pad_token": special[2]} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=special[0], eos_token=special[1], **extra
    )


def llama_checkpoint(d: Path) -> Path:
    """Tiny Llama, its BPE tokenizer with bos/eos/pad."""
    tok = bpe_tokenizer(300, pad=True, special=("<s>", "</s>", "<pad>"))
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


def gpt2_checkpoint(d: Path) -> Path:
    """Tiny GPT-2 with another vocabulary and, like GPT-2, no pad token (bos = eos)."""
    tok = bpe_tokenizer(280, pad=False, special=("<|endoftext|>", "<|endoftext|>"))
    torch.manual_seed(1)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def play(run: Path, *overrides: str) -> GameLoop:
    """A 1-round tiny game composed from overrides only; the GameLoop is returned for checks."""
    quiet_libraries()
    cfg = compose_cfg(["experiment=tiny", "game.rounds=1", *overrides], run_dir=run)
    torch.manual_seed(cfg.seed)
    game = GameLoop(cfg)
    game.run()
    return game


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _changed(before: dict, after: dict, skip: str = "score") -> float:
    """Largest absolute change over the tensors both have (the RM's new head excluded)."""
    shared = [k for k in before if k in after and skip not in k]
    assert shared
    return max(float((before[k] - after[k]).abs().max()) for k in shared)


def _reload_matches_module(game: GameLoop, prompt: str, responses: list[str]) -> None:
    """The exported final policy and RM, reloaded by plain transformers, give the in-game
    module's logits and rewards (right padding, the RM pooling the last non-pad token)."""
    final = game.run_dir / "final"
    policy = AutoModelForCausalLM.from_pretrained(str(final / "policy")).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(str(final / "rm")).eval()
    for name, module, player in (
        ("policy", game.players.policy, "policy"),
        ("rm", game.players.rm, "rm"),
    ):
        tok = AutoTokenizer.from_pretrained(str(final / name))
        assert tok.get_vocab() == game.dm.encoders[player].tok.get_vocab()
        assert (final / name / "model.safetensors").exists()
        assert not any("lora" in k for k in _weights(final / name))
        module.eval()

    def padded(player: str) -> tuple[torch.Tensor, torch.Tensor]:
        item = game.dm.text_item(0, prompt, responses, [0.0] * len(responses), player)
        b = next(iter(game.dm.listwise_loader([item], "check")))
        ids, att = b["input_ids"][0], b["attention_mask"][0]
        assert len(set(att.sum(-1).tolist())) > 1, "the texts should need padding"
        return ids, att

    with torch.no_grad():
        ids, att = padded("policy")
        torch.testing.assert_close(
            policy(input_ids=ids, attention_mask=att).logits,
            game.players.policy(input_ids=ids, attention_mask=att).logits,
        )
        ids, att = padded("rm")
        torch.testing.assert_close(
            rm(input_ids=ids, attention_mask=att).logits[:, 0], game.players.rm_module()(ids, att)
        )


# ---- one checkpoint for both players ------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return llama_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return gpt2_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


@pytest.fixture(scope="module")
def llama_game(tmp_path_factory, llama_dir: Path) -> GameLoop:
    run = tmp_path_factory.mktemp("hf") / "run"
    return play(run, f"policy.model_name_or_path={llama_dir}", f"rm.model_name_or_path={llama_dir}")


def test_game_plays_from_a_local_checkpoint(llama_game: GameLoop, llama_dir: Path):
    run = llama_game.run_dir
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for key in ORACLE_KEYS.table:
        assert all(key in r for r in rounds), key
    assert rounds[1]["steps/policy"] > 0 and rounds[1]["steps/rm"] > 0
    # the checkpoint's tokenizer, shared by both players, not the task's character tokenizer
    assert llama_game.players.rm_tokenizer is llama_game.players.tokenizer
    assert len(llama_game.players.tokenizer) == len(AutoTokenizer.from_pretrained(str(llama_dir)))
    start = _weights(llama_dir)
    for player in ("policy", "rm"):
        for d in (run / "rounds" / "round_01" / player, run / "final" / player):
            assert _changed(start, _weights(d)) > 1e-4, (player, d)
    assert set(_weights(run / "final" / "rm")) - set(start) == {"score.weight"}


def test_export_reloads_with_plain_transformers(llama_game: GameLoop):
    _reload_matches_module(llama_game, "93521=", ["12359", "1", "9532111"])
    # an exported RM is a one-label classifier checkpoint: a next game loads it, head and all
    d = llama_game.run_dir / "final" / "rm"
    rm = load_sequence_classifier(d, load_tokenizer(d, "rm.x"), "rm.x", seed=123)
    torch.testing.assert_close(rm.score.weight, llama_game.players.rm.score.weight)


def test_checkpoint_errors_name_key_and_path(tmp_path: Path, llama_dir: Path):
    two = tmp_path / "two-labels"
    cfg = LlamaConfig.from_pretrained(str(llama_dir))
    cfg.num_labels = 2
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(two))
    AutoTokenizer.from_pretrained(str(llama_dir)).save_pretrained(str(two))
    with pytest.raises(ValueError, match=r"rm.model_name_or_path=.*two-labels.*2 labels"):
        load_sequence_classifier(two, load_tokenizer(two, "k"), "rm.model_name_or_path", seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"policy.model_name_or_path=.*no config.json"):
        checkpoint_dir(tmp_path / "empty", "policy.model_name_or_path")


def test_hub_name_not_on_disk_is_a_clear_error_without_network(tmp_path: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for key in ("policy", "rm"):
        cfg = compose_cfg(
            ["experiment=tiny", f"{key}.model_name_or_path=meta-llama/Llama-2-7b-hf"],
            run_dir=tmp_path / key,
        )
        with pytest.raises(FileNotFoundError) as err:
            GameLoop(cfg)
        msg = str(err.value)
        assert f"{key}.model_name_or_path" in msg and "meta-llama/Llama-2-7b-hf" in msg
        assert "no downloads" in msg


def test_encoder_template_separator_and_left_truncation(llama_dir: Path):
    tok = AutoTokenizer.from_pretrained(str(llama_dir))
    enc = Encoder(tok, 24, 40, prompt_template="Human: {prompt} Assistant:", separator="</s>")
    ids = enc.prompt("123=")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "Human: 123= Assistant:"
    long = enc.prompt("9" * 60 + "=")
    assert len(long) == 24 and long[-1] == tok.eos_token_id
    assert tok.decode(long[1:-1]).endswith("= Assistant:")  # the end of the prompt is kept
    with pytest.raises(ValueError, match="placeholder"):
        Encoder(tok, 12, 40, prompt_template="Human:")


# ---- different tokenizers for the two players --------------------------------------------------
def test_players_with_different_tokenizers(tmp_path: Path, llama_dir: Path, gpt2_dir: Path, caplog):
    gpt2 = gpt2_dir
    with caplog.at_level(logging.WARNING, logger="apo.modules.backbones"):
        game = play(
            tmp_path / "run",
            f"policy.model_name_or_path={llama_dir}",
            f"rm.model_name_or_path={gpt2}",
            "rm.prompt_template='Q: {prompt} A:'",
        )
    assert "rm.model_name_or_path" in caplog.text and "no pad token" in caplog.text
    ptok, rtok = game.players.tokenizer, game.players.rm_tokenizer
    assert ptok.get_vocab() != rtok.get_vocab() and rtok.pad_token_id == rtok.eos_token_id
    rounds = json.loads((game.run_dir / "summary.json").read_text())["rounds"]
    # a random checkpoint's samples nearly all earn oracle reward 0: whether two of one prompt
    # differ (a pair to rank; else the accuracy is NaN, None in JSON) is up to the sampler's draws
    accs = [r["rm/onpolicy/acc"] for r in rounds]
    assert all(a is None or 0.0 <= a <= 1.0 for a in accs) and any(a is not None for a in accs)
    # the RM reads the policy's samples as text, re-encoded with its own tokenizer and template
    recs = game.state.samples["rm"][:4]
    for item, rec in zip(game.dm.sample_items(recs, "rm"), recs):
        for seq, text in zip(item["seqs"], rec["texts"]):
            assert rtok.decode(seq[: item["prompt_len"]]) == f"<|endoftext|>Q: {rec['prompt']} A:"
            assert seq[item["prompt_len"] :] == rtok(text)["input_ids"] + [rtok.eos_token_id]
    for item, rec in zip(game.dm.sample_items(recs, "policy"), recs):
        assert item["seqs"][0][item["prompt_len"] :] == rec["responses"][0] + [ptok.eos_token_id]
    # the exported RM carries its own tokenizer; it ends responses with eos, which is also its
    # pad, so transformers' own pooling (last non-pad token) differs: compare on unpadded rows
    rm = AutoModelForSequenceClassification.from_pretrained(str(game.run_dir / "final" / "rm"))
    assert AutoTokenizer.from_pretrained(str(game.run_dir / "final" / "rm")).get_vocab() == (
        rtok.get_vocab()
    )
    item = game.dm.text_item(0, "4312=", ["1234"], [0.0], "rm")
    ids = torch.tensor(item["seqs"])
    with torch.no_grad():
        hidden = rm.base_model(input_ids=ids)[0]
        torch.testing.assert_close(
            rm.score(hidden)[:, -1, 0], game.players.rm_module().eval()(ids, torch.ones_like(ids))
        )


# ---- LoRA ----------------------------------------------------------------------------------------
def test_lora_players_train_adapters_and_export_merged(
    tmp_path: Path, llama_dir: Path, gpt2_dir: Path
):
    # a GPT-2 policy (Conv1D layers, no pad token) and a Llama RM, both with LoRA adapters
    game = play(
        tmp_path / "run",
        f"policy.model_name_or_path={gpt2_dir}",
        f"rm.model_name_or_path={llama_dir}",
        "policy.lora.r=4",
        "rm.lora.r=4",
        "policy.optimizer.lr=1e-2",
    )
    checkpoints = {"policy": gpt2_dir, "rm": llama_dir}
    for player, module, head in (
        ("policy", game.players.policy, None),
        ("rm", game.players.rm, "score.weight"),
    ):
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n or n == head for n in trainable)
        assert head is None or head in trainable
        start = _weights(checkpoints[player])
        # the live base weights stayed frozen; the export, adapters merged in, moved
        live = {
            k.replace(".base_layer", ""): v
            for k, v in module.state_dict().items()
            if "lora_" not in k
        }
        assert _changed(start, live) == 0.0, player
        assert _changed(start, _weights(game.run_dir / "final" / player)) > 1e-5, player
    _reload_matches_module(game, "93521=", ["12359", "1", "9532111"])


def test_warm_start_key_sees_checkpoints_but_not_unset_options(llama_dir: Path):
    from omegaconf import open_dict

    from apo.warm_cache import OPTIONAL_KEY_PATHS, warm_start_key

    base = compose_cfg(["experiment=tiny"])
    bare = compose_cfg(["experiment=tiny"])
    with open_dict(bare):
        for path in OPTIONAL_KEY_PATHS:
            player, name = path.split(".")
            del bare[player][name]
    # caches written before these options existed keep their keys
    assert warm_start_key(base) == warm_start_key(bare)
    keys = {
        warm_start_key(compose_cfg(["experiment=tiny", *o]))
        for o in (
            [f"policy.model_name_or_path={llama_dir}"],
            [f"rm.model_name_or_path={llama_dir}"],
            ["policy.lora.r=4"],
            ["rm.prompt_template='Q: {prompt} A:'"],
        )
    }
    assert len(keys) == 4 and warm_start_key(base) not in keys
