"""`apo-rejection-sample input=<scored file> output=<samples file>`: the `top_n` best-scored
samples per query, best first, in the APO samples format: SFT / RJS data (e.g. `data.sft` of
`data=apo_files`), or with `golden_output` also a golden file of the best sample."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from apo.train import CONFIG_PATH

log = logging.getLogger(__name__)


def rejection_sample(cfg: DictConfig) -> list[dict]:
    # imported here: `apo-rejection-sample --help` must not wait for torch and Lightning
    from apo.data.adapters import write_golden, write_samples
    from apo.steps.common import read_sample_sets

    n = int(cfg.top_n)
    if n < 1:
        raise ValueError(f"top_n must be at least 1, got {n}")
    sets = read_sample_sets(cfg.input, need_scores=True)
    records = []
    for s in sets:
        # stable: among equal scores the earlier sample wins
        order = sorted(range(len(s.samples)), key=lambda j: -s.scores[j])[:n]
        records.append(
            {"query_id": s.query_id, "query": s.query, "samples": [s.samples[j] for j in order]}
        )
    write_samples(cfg.output, records)
    if cfg.get("golden_output"):
        write_golden(cfg.golden_output, {r["query_id"]: r["samples"][0] for r in records})
    log.info("kept the best %d of each of %d queries -> %s", n, len(records), cfg.output)
    return records


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="rejection_sample")
def main(cfg: DictConfig) -> None:
    rejection_sample(cfg)


if __name__ == "__main__":
    main()
