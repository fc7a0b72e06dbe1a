"""`apo-score rm=<RM or round dir> samples=<file> output=<comparisons file>`: RM scores of every
sample, written in the APO comparison format (`text`: query<sep>sample, `scores`, `query_id`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from apo.train import CONFIG_PATH, quiet_libraries

if TYPE_CHECKING:
    from apo.data.game_data import ListwiseItem

log = logging.getLogger(__name__)


def score(cfg: DictConfig) -> list[ListwiseItem]:
    # imported here: `apo-score --help` must not wait for torch and Lightning
    from apo.data.adapters import DataFormatError, write_comparisons
    from apo.data.game_data import ListwiseItem
    from apo.steps.common import check_lengths, datamodule, load_rm, read_sample_sets, rm_rewards

    path = Path(cfg.samples)
    sets = read_sample_sets(path)
    few = next((s for s in sets if len(s.samples) < 2), None)
    if few is not None:
        raise few.where.error(
            f"query_id {few.query_id!r} has {len(few.samples)} sample; the comparison format "
            "needs at least 2 per query",
            "sample_1",
        )
    rm, tok, d = load_rm(cfg.rm.path, str(cfg.rm.pooling))
    dm = datamodule(tok, cfg)
    sets = check_lengths(dm, path, sets, cfg.overlength)
    rewards = rm_rewards(cfg, rm, dm, [s.query for s in sets], [s.samples for s in sets])
    scored = [ListwiseItem(s.query, s.samples, r) for s, r in zip(sets, rewards)]
    bad = next((s for s, it in zip(sets, scored) if not all(map(math.isfinite, it.scores))), None)
    if bad is not None:
        raise DataFormatError(d, f"the RM gave a non-finite score for query_id {bad.query_id!r}")
    write_comparisons(cfg.output, scored, sep=cfg.sep, query_ids=[s.query_id for s in sets])
    log.info("scored %d queries with %s -> %s", len(scored), d, cfg.output)
    return scored


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="score")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    score(cfg)


if __name__ == "__main__":
    main()
