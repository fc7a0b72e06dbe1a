"""An RM ensemble's order disagreement on the policy's test samples, by how far apart the two
samples of a pair are (edit distance in tokens of the stored text, characters for the built-in
tasks), round by round, for sweeps of ensemble games:

    python benchmarks/ensemble_order.py logs/multiruns/ensemble_shift_frozen logs/multiruns/ensemble_shift

`rm/ensemble/order_test` rises when the members order more pairs differently; it would rise too
if the policy's samples only came closer to one another (nearly equal answers, nearly equal
rewards, orders that flip on a small difference). Reading it per edit-distance stratum separates
the two: a rise within one stratum is not a change of the pairs' closeness. Reads each round's
`eval_samples.jsonl` (its `rm_members`); pairs of one response sampled twice are skipped, as in
the metric. Not a test: it prints a table for the README.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import statistics
from pathlib import Path

from apo.modules.ensemble import order_disagreement


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def pairs(path: Path) -> list[tuple[int, float]]:
    """(edit distance, share of member pairs ordering the two differently) per pair of distinct
    responses that some member does not tie: the pairs and the rule of the game's metric
    (`apo.modules.ensemble.order_disagreement`), one pair at a time."""
    by_prompt = collections.defaultdict(list)
    for line in path.open():
        row = json.loads(line)
        if "rm_members" not in row:
            raise SystemExit(f"{path}: no rm_members (not an ensemble game, or an older run)")
        by_prompt[row["prompt"]].append((row["response"], row["rm_members"]))
    out = []
    for recs in by_prompt.values():
        for (ta, ra), (tb, rb) in itertools.combinations(recs, 2):
            share = order_disagreement([[ra, rb]], [[ta, tb]])
            if not math.isnan(share):  # the same response twice, or a tie for every member
                out.append((edit_distance(ta, tb), share))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--strata", default="1,2,3", help="edit distances; the last one is 'or more'")
    a = ap.parse_args()
    strata = [int(x) for x in a.strata.split(",")]
    label = [str(s) for s in strata[:-1]] + [f">={strata[-1]}"]
    print("| sweep | round | pairs | all | " + " | ".join(f"d {x}" for x in label) + " |")
    print("|---|---|---|---|" + "---|" * len(strata))
    for sweep in a.sweeps:
        files = sorted(sweep.glob("*/rounds/round_*/eval_samples.jsonl"))
        rounds = sorted({f.parent.name for f in files})
        for rnd in rounds:
            got = [p for f in files if f.parent.name == rnd for p in pairs(f)]
            cells = []
            for i, s in enumerate(strata):
                last = i == len(strata) - 1
                v = [x for d, x in got if d == s or (last and d > s)]
                cells.append(f"{statistics.mean(v):.3f} ({len(v)})" if v else "-")
            overall = statistics.mean(x for _, x in got) if got else float("nan")
            print(
                f"| {sweep.name} | {int(rnd.split('_')[1])} | {len(got)} | {overall:.3f} | "
                + " | ".join(cells)
                + " |"
            )


if __name__ == "__main__":
    main()
