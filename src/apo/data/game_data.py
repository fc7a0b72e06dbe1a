"""The data one game needs, in one structure, whatever its source (an oracle task or files)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from apo.tasks.base import OracleTask

#: a conversation: `{"role": "system" | "user" | "assistant", "content": str}` dicts
Messages = list[dict[str, str]]


@dataclass
class ListwiseItem:
    """A prompt with k responses and their scores; higher score = preferred (ties carry no order)."""

    prompt: str
    responses: list[str]
    scores: list[float]
    #: the prompt as a conversation, when the data had one; `prompt` is then its text rendering
    #: (the fallback), and the players' chat templates render these messages instead. The text
    #: alone is the item's identity, so it is left out of comparisons.
    messages: Messages | None = field(default=None, compare=False)
    #: an extra margin the RM's pairwise loss must clear on this item (label denoising's
    #: adaptive margin, `apo.losses.denoise`); 0 = none
    margin: float = 0.0
    #: label smoothing of this item's pairs (label denoising's `soften`); 0 = none
    smoothing: float = 0.0


@dataclass
class GameData:
    """Everything but the policy's own samples (each part empty unless given).

    `human_*` are the preference data D_P (the RM's anchor); `rm_prompts` with `golden` are the
    APO split; `policy_prompts` are the prompts the policy is aligned on; `test_prompts` are held
    out for evaluation only. `test_rm_pairs` are preference pairs kept out of the game, on which
    file data trains the separate test RM that judges the policy where there is no oracle.
    `messages` maps a prompt text to the conversation it renders, for conversational data:
    prompts travel as text everywhere (splits, samples, round files), and each player's encoder
    looks the conversation up to render it with its own chat template.
    """

    sft: list[tuple[str, str]] = field(default_factory=list)
    human_train: list[ListwiseItem] = field(default_factory=list)
    human_val: list[ListwiseItem] = field(default_factory=list)
    rm_prompts: list[str] = field(default_factory=list)
    golden: dict[str, str] = field(default_factory=dict)
    policy_prompts: list[str] = field(default_factory=list)
    test_prompts: list[str] = field(default_factory=list)
    meta: dict[str, float] = field(default_factory=dict)
    test_rm_pairs: list[ListwiseItem] = field(default_factory=list)
    messages: dict[str, Messages] = field(default_factory=dict)


def _unique_prompts(task: OracleTask, n: int, rng: random.Random) -> list[str]:
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < n:
        seen.setdefault(task.sample_prompt(rng), None)
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(
                f"{type(task).__name__}: could only draw {len(seen)} distinct prompts of the {n} "
                "needed; lower the data sizes or widen the task's prompt space"
            )
    return list(seen)


def _human_pair(task: OracleTask, prompt: str, rng: random.Random) -> ListwiseItem:
    # Two responses from the starting distribution: real preference data is collected on the
    # initial model's outputs, so a fixed RM must extrapolate once the policy improves.
    a = task.noisy_response(prompt, rng)
    b = task.noisy_response(prompt, rng)
    for _ in range(8):
        if a != b:
            break
        b = task.noisy_response(prompt, rng)
    chosen, rejected = (a, b) if task.annotate(prompt, a, b, rng) else (b, a)
    return ListwiseItem(prompt, [chosen, rejected], [1.0, 0.0])


def build_task_data(
    task: OracleTask,
    seed: int,
    n_sft: int,
    n_human_train: int,
    n_human_val: int,
    n_rm: int,
    n_policy: int,
    n_test: int,
) -> GameData:
    """Disjoint prompt splits and their data, a pure function of the task and `seed`."""
    sizes = dict(
        n_sft=n_sft,
        n_human_train=n_human_train,
        n_human_val=n_human_val,
        n_rm=n_rm,
        n_policy=n_policy,
        n_test=n_test,
    )
    bad = {k: v for k, v in sizes.items() if v < 0 or (v == 0 and k != "n_sft")}
    if bad:
        raise ValueError(f"build_task_data: split sizes must be positive, got {bad}")
    rng = random.Random(seed)
    prompts = _unique_prompts(task, sum(sizes.values()), rng)
    cuts, start = {}, 0
    for k, v in sizes.items():
        cuts[k] = prompts[start : start + v]
        start += v
    sft = [(p, task.demonstration(p, rng)) for p in cuts["n_sft"]]
    human_train = [_human_pair(task, p, rng) for p in cuts["n_human_train"]]
    human_val = [_human_pair(task, p, rng) for p in cuts["n_human_val"]]
    # How often the simulated annotators agree with the oracle: the ceiling of rm/val/acc.
    agree = [
        task.reward(it.prompt, it.responses[0]) > task.reward(it.prompt, it.responses[1])
        for it in human_val
        if task.reward(it.prompt, it.responses[0]) != task.reward(it.prompt, it.responses[1])
    ]
    return GameData(
        sft=sft,
        human_train=human_train,
        human_val=human_val,
        rm_prompts=cuts["n_rm"],
        golden={p: task.golden(p) for p in cuts["n_rm"]},
        policy_prompts=cuts["n_policy"],
        test_prompts=cuts["n_test"],
        meta={
            "annotator_oracle_agreement": sum(agree) / max(len(agree), 1),
            "sft_demo_gold_reward": sum(task.reward(p, r) for p, r in sft) / max(len(sft), 1),
        },
    )
