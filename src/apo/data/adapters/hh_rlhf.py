"""Anthropic HH-RLHF preference pairs: `{"chosen": transcript, "rejected": transcript}` records,
split into the shared prompt and the two final Assistant replies."""

from __future__ import annotations

from pathlib import Path

from apo.data.adapters.errors import DataFormatError, require_object, require_str
from apo.data.adapters.jsonio import read_records
from apo.data.adapters.report import LoadReport
from apo.data.game_data import ListwiseItem

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

#: skip reasons, in the order they are checked
NO_ASSISTANT_TURN = "no_assistant_turn"
PROMPT_MISMATCH = "prompt_mismatch"
EMPTY_RESPONSE = "empty_response"
HUMAN_TURN_IN_RESPONSE = "human_turn_in_response"
IDENTICAL_RESPONSES = "identical_responses"


def split_transcript(transcript: str) -> tuple[str, str] | None:
    """`(prompt, response)` split after the last `"\\n\\nAssistant:"`, or `None` if there is none.

    The prompt keeps the marker and is exact; the response loses its leading whitespace (the
    space after the marker belongs to the format, not to the reply)."""
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return transcript[:cut], transcript[cut:].lstrip()


def load_hh_rlhf(
    path: str | Path, *, max_examples: int = 5
) -> tuple[list[ListwiseItem], LoadReport]:
    """Items `(prompt, [chosen, rejected], [1.0, 0.0])` and a report of the records skipped.

    Malformed JSON and missing or non-string `chosen`/`rejected` are errors. Records that are
    well-formed but unusable as a pair are skipped and counted by reason (the public data holds
    a few): no Assistant turn on a side, prompts that differ between the sides, an empty reply,
    a reply followed by a Human turn, or identical replies."""
    path = Path(path)
    report = LoadReport(path, max_examples=max_examples)
    items: list[ListwiseItem] = []
    for where, raw in read_records(path):
        report.records += 1
        rec = require_object(raw, where)
        chosen = require_str(rec, "chosen", where)
        rejected = require_str(rec, "rejected", where)
        a, b = split_transcript(chosen), split_transcript(rejected)
        if a is None or b is None:
            reason = NO_ASSISTANT_TURN
        elif a[0] != b[0]:
            # Upstream quirk: one side has an extra or missing Assistant turn, so the two
            # replies do not answer the same context.
            reason = PROMPT_MISMATCH
        elif not a[1] or not b[1]:
            reason = EMPTY_RESPONSE
        elif HUMAN in a[1] or HUMAN in b[1]:
            # The transcript ends on a Human turn: the "reply" would hold the user's words.
            reason = HUMAN_TURN_IN_RESPONSE
        elif a[1] == b[1]:
            reason = IDENTICAL_RESPONSES
        else:
            items.append(ListwiseItem(a[0], [a[1], b[1]], [1.0, 0.0]))
            continue
        report.skip(reason, where)
    report.loaded = len(items)
    if not items:
        raise DataFormatError(path, f"no usable record ({report.counts()})")
    return items, report
