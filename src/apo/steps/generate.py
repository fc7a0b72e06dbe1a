"""`apo-generate model=<policy or round dir> prompts=<file> output=<samples file>`: K samples per
query from a saved policy, written in the APO samples format (`query_id`, `query`, `sample_*`).
With `best_of=N rm.path=<RM or round dir>` each of the K is the RM's pick among N draws
(best-of-N decoding, `apo.decoding`)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from apo.train import CONFIG_PATH, quiet_libraries

log = logging.getLogger(__name__)


def generate(cfg: DictConfig) -> list[dict]:
    """Sample `num_samples` responses per query; an empty response is drawn again (up to
    `max_retries` times), since the samples format holds no empty sample."""
    # imported here: `apo-generate --help` must not wait for torch and Lightning
    import lightning as L

    from apo.data.adapters import write_samples
    from apo.decoding import best_of_n
    from apo.game.plan import sampling_spec
    from apo.modules.policy import PolicyModule
    from apo.steps.common import (
        datamodule,
        load_policy,
        load_rm,
        make_trainer,
        read_queries,
        rm_rewards,
    )

    if int(cfg.num_samples) < 1:
        raise ValueError(f"num_samples must be at least 1, got {cfg.num_samples}")
    n = int(cfg.best_of)
    if n < 1:
        raise ValueError(f"best_of must be at least 1, got {cfg.best_of}")
    guided = int(cfg.lookahead.beams) > 0
    if (n > 1 or guided) and cfg.rm.path is None:
        raise ValueError(
            "best_of > 1 and lookahead.beams > 0 need rm.path: the RM (or a round dir) that "
            "picks the best"
        )
    if n > 1 and guided:
        raise ValueError("best_of > 1 and lookahead.beams > 0: choose one decoding")
    L.seed_everything(cfg.seed, verbose=False)
    queries = read_queries(cfg.prompts)
    model, tok = load_policy(cfg.model)
    # loaded before any sampling: a bad RM dir fails before the work is done
    picker = load_rm(cfg.rm.path, str(cfg.rm.pooling)) if n > 1 or guided else None
    spec = sampling_spec(cfg.generation, mixture=0.0)
    dm = datamodule(tok, cfg)
    out_k = int(cfg.num_samples)
    k = out_k * n
    if guided:
        from apo.steps.lookahead import lookahead_samples

        rm, rm_tok, _ = picker
        texts = lookahead_samples(
            model,
            tok,
            dm,
            rm,
            datamodule(rm_tok, cfg),
            [q for _, q in queries],
            spec,
            cfg.lookahead,
            out_k,
            int(cfg.seed),
        )
        records = [{"query_id": q, "query": t, "samples": ts} for (q, t), ts in zip(queries, texts)]
        write_samples(cfg.output, records)
        log.info("wrote %d queries x %d guided samples to %s", len(records), out_k, cfg.output)
        return records
    policy = PolicyModule(model, sampling=spec, seed=int(cfg.seed))
    texts = [
        rec["texts"] for rec in dm.generate(make_trainer(cfg), policy, [q for _, q in queries], k)
    ]
    for attempt in range(1, int(cfg.max_retries) + 1):
        todo = [i for i, ts in enumerate(texts) if any(not t.strip() for t in ts)]
        if not todo:
            break
        policy = PolicyModule(model, sampling=spec, seed=int(cfg.seed) * 1000 + attempt)
        again = dm.generate(make_trainer(cfg), policy, [queries[i][1] for i in todo], k)
        for i, rec in zip(todo, again):
            fresh = iter(t for t in rec["texts"] if t.strip())
            texts[i] = [t if t.strip() else next(fresh, t) for t in texts[i]]
    for (qid, _), ts in zip(queries, texts):
        if any(not t.strip() for t in ts):
            raise RuntimeError(
                f"the policy gave an empty response for query_id {qid!r} in {int(cfg.max_retries) + 1} "
                "tries; raise max_retries or generation.max_new_tokens"
            )
    if picker is not None:  # best-of-N
        rm, rm_tok, _ = picker
        rewards = rm_rewards(cfg, rm, datamodule(rm_tok, cfg), [q for _, q in queries], texts)
        texts = [[ts[i] for i in best_of_n(rs, n)] for ts, rs in zip(texts, rewards)]
    records = [{"query_id": qid, "query": q, "samples": ts} for (qid, q), ts in zip(queries, texts)]
    write_samples(cfg.output, records)
    log.info("wrote %d queries x %d samples to %s", len(records), out_k, cfg.output)
    return records


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="generate")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    generate(cfg)


if __name__ == "__main__":
    main()
