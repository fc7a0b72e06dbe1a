"""Exports: plain transformers checkpoints, written atomically, with the given weights."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig

from apo.distributed import full_state_dict
from apo.export import save_player
from apo.modules.backbones import build_causal_lm
from tests.conftest import ROOT, sort_task


def _model_and_tokenizer():
    tok = sort_task().build_tokenizer()
    cfg = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return build_causal_lm(cfg, tok, seed=0), tok


def test_one_state_dict_saved_to_several_directories(tmp_path):
    """A round's dir and final/ get the same weights from one gathered state dict (transformers'
    save_pretrained empties the dict it is given; a sharded game's final/ once had no weights)."""
    model, tok = _model_and_tokenizer()
    # the saved weights are the dict's, not the module's
    weights = {k: v + 1.0 for k, v in full_state_dict(model).items()}
    for d in ("round", "final"):
        save_player(model, tok, tmp_path / d, state_dict=weights)
        saved = load_file(tmp_path / d / "model.safetensors")
        assert saved.keys() == weights.keys()
        assert all(torch.equal(saved[k], weights[k]) for k in saved), d
        assert saved["model.embed_tokens.weight"].abs().sum() > 0


def test_files_get_the_umask_mode_and_no_temporary_dir_is_left(tmp_path):
    model, tok = _model_and_tokenizer()
    old = os.umask(0o022)
    try:
        out = save_player(model, tok, tmp_path / "p")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((out / "model.safetensors").stat().st_mode)
    assert mode == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_a_write_failure_names_the_directory_and_leaves_nothing(tmp_path):
    """A disk that fills up mid-save (here: a file-size limit, EFBIG, in a child process)
    gives an error naming the checkpoint directory, and no half-written or temporary dir."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from tests.test_export import _model_and_tokenizer
        from apo.export import save_player
        model, tok = _model_and_tokenizer()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        try:
            save_player(model, tok, {str(tmp_path / "p")!r})
        except OSError as e:
            print("OSError:", e)
            sys.exit(3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{tmp_path / 'p'}: cannot write the checkpoint" in proc.stdout
    assert "File too large" in proc.stdout
    assert list(tmp_path.iterdir()) == []
