"""`apo-report` on synthetic sweep directories built here from fake summaries."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import yaml
from matplotlib.text import Text
from PIL import Image

from apo.report import (
    build_report,
    find_jobs,
    load_jobs,
    main,
    mean_se,
    metric_table,
    win_rates,
)
from apo.report.plots import (
    MIN_SEEDS_FOR_BAND,
    band_mask,
    group_styles,
    legend_labels,
    plot_metric,
    plot_reliability,
    plot_reward_histograms,
    zscores,
)
from apo.report.stats import cell

# gold reward of the last round (round 2) per (apo_coeff, seed); round r is scaled by r / 2
FINAL = {
    ("0", 0): 0.50,
    ("0", 1): 0.60,
    ("0", 2): 0.55,
    ("1.0", 0): 0.70,
    ("1.0", 1): 0.80,
    ("1.0", 2): 0.90,
}


def _job(
    root: Path,
    num: int,
    apo: str,
    seed: int,
    rounds: int | None = 3,
    test=None,
    *,
    final: float | None = None,
    scores: list[float] | None = None,
    extra: tuple[str, ...] = ("objective=rjs",),
) -> Path:
    """A fake job: `final` gold reward at the last round (default FINAL's), the last round's
    samples with RM `scores` (default: derived from the test rewards), overrides `extra`."""
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"game.apo_coeff={apo}", f"seed={seed}", *extra])
    )
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"game": {"rounds": 2}, "seed": seed}))
    if rounds is None:
        return d
    final = FINAL[(apo, seed)] if final is None else final
    summary = [
        {
            "round": r,
            "policy/gold_reward": final * r / 2,
            "rm/onpolicy/acc": 0.5 + 0.1 * r,
            "rm/val/acc": 0.7,
            "rm/val/ece": 0.05,
        }
        for r in range(rounds)
    ]
    (d / "summary.json").write_text(json.dumps({"rounds": summary}))
    last = d / "rounds" / f"round_{rounds - 1:02d}"
    last.mkdir(parents=True)
    rows = [
        {"prompt": p, "response": "x", "oracle_reward": v, "rm_score": v * 3 - 1}
        for p, v in (test or {"a=": final, "b=": final, "c=": 0.5}).items()
    ]
    (last / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if scores is not None:
        rows = [{"prompt": f"p{i}", "response": "x", "rm_score": v} for i, v in enumerate(scores)]
    (last / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (last / "calibration.json").write_text(
        json.dumps(
            {"counts": [0, 4, 6], "confidence": [None, 0.4, 0.8], "accuracy": [None, 0.5, 0.7]}
        )
    )
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for i, (apo, seed) in enumerate(FINAL):
        _job(root, i, apo, seed)
    (root / "multirun.yaml").write_text("{}")
    return root


def test_mean_and_standard_error_by_hand():
    m, se, n = mean_se([0.7, 0.8, 0.9])
    # sample variance = (0.01 + 0 + 0.01) / 2 = 0.01; se = sqrt(0.01 / 3)
    assert (m, n) == (pytest.approx(0.8), 3) and se == pytest.approx(math.sqrt(0.01 / 3))
    assert math.isnan(mean_se([0.4])[1]) and mean_se([])[2] == 0


def test_settings_that_do_not_change_results_do_not_split_groups(tmp_path: Path):
    d = _job(tmp_path / "s", 0, "0", 0)
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(
            [
                "game.apo_coeff=0",
                "seed=0",
                "game.warm_start_cache=/x",
                "hydra.run.dir=/y",
                "progress=lines",
                "progress_every_s=5",
                "resume=true",
            ]
        )
    )
    assert find_jobs(tmp_path / "s")[0].group == "game.apo_coeff=0"


def test_table_numbers(sweep: Path):
    table = metric_table(find_jobs(sweep), "policy/gold_reward")
    apo, base = table["game.apo_coeff=1.0 objective=rjs"], table["game.apo_coeff=0 objective=rjs"]
    assert apo[2][0] == pytest.approx(0.8) and apo[2][2] == 3
    assert base[2][0] == pytest.approx(0.55)
    assert base[2][1] == pytest.approx(math.sqrt(((0.05**2) * 2 / 2) / 3))
    assert apo[0][0] == pytest.approx(0.0)


def test_win_rate_against_baseline(sweep: Path):
    wins = win_rates(find_jobs(sweep), "game.apo_coeff=0")
    # every seed: prompts a, b won (0.7..0.9 > 0.5..0.6), prompt c tied -> (1 + 1 + 0.5) / 3
    m, _, n = wins["game.apo_coeff=1.0 objective=rjs"]
    assert m == pytest.approx(2.5 / 3) and n == 3
    assert "game.apo_coeff=0 objective=rjs" not in wins


def test_final_differences_against_start_and_baseline_by_hand(sweep: Path):
    from apo.report.stats import final_deltas

    d = final_deltas(find_jobs(sweep), "game.apo_coeff=0", "policy/gold_reward")
    apo, base = d["game.apo_coeff=1.0 objective=rjs"], d["game.apo_coeff=0 objective=rjs"]
    assert apo["start"][0] == 0.0 and apo["final"][0] == pytest.approx(0.8)
    assert apo["vs_start"][0] == pytest.approx(0.8)
    # paired by seed: 0.70 - 0.50, 0.80 - 0.60, 0.90 - 0.55
    diffs = [0.20, 0.20, 0.35]
    assert apo["vs_baseline"][0] == pytest.approx(sum(diffs) / 3)
    assert apo["vs_baseline"][1] == pytest.approx(mean_se(diffs)[1])
    assert apo["wins"] == (3, 3)
    assert "vs_baseline" not in base and base["final"][0] == pytest.approx(0.55)
    text = (build_report(sweep)[1]).split("**Final policy/gold_reward")[1]
    assert "| `game.apo_coeff=1.0 objective=rjs` | 0.000 ± 0.000 | 0.800 ± 0.058 |" in text
    assert "| 3/3 |" in text


def test_report_files_and_images(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "0.800 ± 0.058" in printed  # apo group, round 2: 0.8 ± sqrt(0.01 / 3)
    out = sweep / "report"
    text = (out / "report.md").read_text()
    assert "**policy/gold_reward**" in text and "Win rate" in text
    for name in (
        "policy_gold_reward.png",
        "rm_onpolicy_acc.png",
        "reliability.png",
        "reward_histograms.png",
    ):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100
        assert f"({name})" in text


def test_partial_sweep_lists_unfinished_jobs(tmp_path: Path):
    root = tmp_path / "partial"
    _job(root, 0, "0", 0)
    _job(root, 1, "1.0", 0, rounds=None)  # still running: no summary yet
    _job(root, 2, "1.0", 1, rounds=2)  # stopped after round 1 of 2
    path, text = build_report(root)
    assert "no summary yet" in text and "incomplete: 2 of 3 rounds" in text
    table = metric_table(find_jobs(root), "policy/gold_reward")
    assert table["game.apo_coeff=1.0 objective=rjs"][1][2] == 1  # the partial job's rounds count
    # only complete jobs are compared
    assert win_rates(find_jobs(root), "game.apo_coeff=0") == {}
    assert path.exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        find_jobs(tmp_path / "empty")


# ---- duplicates --------------------------------------------------------------------------------
APO_GROUP, BASE_GROUP = "game.apo_coeff=1.0 objective=rjs", "game.apo_coeff=0 objective=rjs"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_seed_rerun_in_another_sweep_is_counted_once_and_warned(sweep: Path, tmp_path, caplog):
    rerun = tmp_path / "rerun"
    # seed 2 of the APO group again, with a different result: counted, it would pull the mean
    # of round 2 from 0.8 to (0.7 + 0.8 + 0.9 + 0.2) / 4 = 0.65
    dup = _job(rerun, 0, "1.0", 2, final=0.2)
    with caplog.at_level(logging.WARNING, logger="apo.report"):
        _, text = build_report([sweep, rerun], out=tmp_path / "out")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(dup) in warned[0] and str(sweep / "5") in warned[0]
    assert f"duplicate of {sweep / '5'}" in text

    jobs = load_jobs([sweep, rerun])
    m, se, n = metric_table(jobs, "policy/gold_reward")[APO_GROUP][2]
    assert (m, n) == (pytest.approx(0.8), 3) and se == pytest.approx(math.sqrt(0.01 / 3))
    assert "0.800 ± 0.058" in text and f"`{APO_GROUP}` (3)" in text
    assert win_rates(jobs, "game.apo_coeff=0")[APO_GROUP][2] == 3
    row = next(
        r
        for r in _rows(tmp_path / "out" / "report.csv")
        if (r["group"], r["metric"], r["round"]) == (APO_GROUP, "policy/gold_reward", "2")
    )
    assert (float(row["mean"]), row["n"]) == (pytest.approx(0.8), "3")


def test_the_same_sweep_given_twice_counts_every_job_once(sweep: Path, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="apo.report"):
        _, text = build_report([sweep, sweep], out=tmp_path / "out")
    assert sum("is given twice" in r.getMessage() for r in caplog.records) == len(FINAL)
    assert text.count("duplicate of") == len(FINAL)
    table = metric_table(load_jobs([sweep, sweep]), "policy/gold_reward")
    assert table[APO_GROUP][2][2] == 3 and table[BASE_GROUP][2][0] == pytest.approx(0.55)


def test_the_more_complete_of_two_duplicates_is_kept(tmp_path: Path):
    first, second = tmp_path / "first", tmp_path / "second"
    _job(first, 0, "1.0", 1, rounds=2, final=0.1)  # stopped after round 1 of 2
    _job(second, 0, "1.0", 1)  # the finished re-run
    jobs = load_jobs([first, second])
    assert jobs[0].status == f"duplicate of {second / '0'}" and jobs[1].duplicate_of is None
    table = metric_table(jobs, "policy/gold_reward")[APO_GROUP]
    assert table[2] == (pytest.approx(0.8), pytest.approx(math.nan, nan_ok=True), 1)
    assert table[1][0] == pytest.approx(0.4)  # the finished job's round 1 (0.8 / 2), not 0.05


# ---- the CSV -----------------------------------------------------------------------------------
def test_csv_holds_the_numbers_of_the_tables(sweep: Path):
    _, text = build_report(sweep)
    rows = _rows(sweep / "report" / "report.csv")
    jobs = load_jobs([sweep])
    assert {r["metric"] for r in rows} == {
        "policy/gold_reward",
        "rm/onpolicy/acc",
        "rm/val/acc",
        "rm/val/ece",
    }
    assert len(rows) == 4 * 2 * 3  # metrics x groups x rounds
    for r in rows:
        m, se, n = metric_table(jobs, r["metric"])[r["group"]][int(r["round"])]
        assert float(r["mean"]) == m and int(r["n"]) == n
        assert float(r["se"]) == pytest.approx(se, abs=1e-15)
        assert cell(float(r["mean"]), float(r["se"]), int(r["n"])) in text
    (win,) = _rows(sweep / "report" / "win_rates.csv")
    assert win["group"] == APO_GROUP and win["baseline_group"] == BASE_GROUP
    assert float(win["mean"]) == pytest.approx(2.5 / 3) and win["n"] == "3"
    assert "report.csv" in text and "win_rates.csv" in text


def test_a_single_seed_has_an_empty_standard_error_in_the_csv(tmp_path: Path):
    _job(tmp_path / "one", 0, "1.0", 0)
    build_report(tmp_path / "one")
    rows = _rows(tmp_path / "one" / "report" / "report.csv")
    assert rows and all(r["se"] == "" and r["n"] == "1" for r in rows)
    # no baseline group: no win rates, and no file claiming some
    assert not (tmp_path / "one" / "report" / "win_rates.csv").exists()


# ---- plots -------------------------------------------------------------------------------------
def _outside(fig) -> list[str]:
    """The texts of `fig` (drawn) that reach past its canvas by more than a pixel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    # tick labels of ticks beyond the axis' view limits exist but are never drawn
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - span <= tick.get_loc() <= hi + span:
                    hidden |= {id(tick.label1), id(tick.label2)}
    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and id(t) not in hidden:
            b = t.get_window_extent(renderer)
            if b.x0 < -1 or b.y0 < -1 or b.x1 > w + 1 or b.y1 > h + 1:
                out.append(t.get_text())
    return out


def _legend_texts(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def test_the_text_check_catches_a_legend_off_the_canvas():
    # the check of the tests below on a 5-inch figure with the legend right of the axes and no
    # room made for it (the old reliability plot's "ga..."): it must fail there
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], label="game.apo_coeff=1.0 objective=dpo")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    assert _outside(fig) == ["game.apo_coeff=1.0 objective=dpo"]


def test_legend_labels_drop_shared_overrides_and_count_seeds():
    labels, title = legend_labels(
        {"game.apo_coeff=0 objective=dpo": 5, "game.apo_coeff=1.0 objective=dpo": 2}
    )
    assert labels == {
        "game.apo_coeff=0 objective=dpo": "game.apo_coeff=0 (n=5)",
        "game.apo_coeff=1.0 objective=dpo": "game.apo_coeff=1.0 (n=2)",
    }
    assert title == "all groups: objective=dpo"
    # one group keeps its overrides; a long label is wrapped, nothing dropped or elided
    long = "game.apo_coeff=1.0 objective=lipo policy.model_name_or_path=/ckpt/llama-7b-rm-final"
    labels, title = legend_labels({long: 3})
    assert title == "" and "\n" in labels[long]
    assert "".join(labels[long].split()) == "".join(f"{long} (n=3)".split())


def test_one_colour_per_stem_and_the_baseline_dashed():
    groups = [f"game.apo_coeff={c} objective={o}" for o in ("dpo", "rjs") for c in ("0", "1.0")]
    styles = group_styles(groups, "game.apo_coeff=0")
    assert [s.linestyle for s in styles.values()] == ["--", "-", "--", "-"]
    dpo0, dpo1, rjs0, rjs1 = (styles[g] for g in groups)
    assert dpo0.color == dpo1.color != rjs0.color == rjs1.color


def test_bands_only_where_a_group_has_enough_seeds(tmp_path: Path):
    assert MIN_SEEDS_FOR_BAND == 3
    assert band_mask([(0.5, 0.1, 3), (0.5, 0.1, 2), (0.5, math.nan, 1), (0.5, 0.0, 5)]) == [
        True,
        False,
        False,
        True,
    ]
    root = tmp_path / "s"
    for i, (apo, seed) in enumerate(FINAL):
        if (apo, seed) != ("1.0", 2):  # the APO group has 2 seeds, the baseline 3
            _job(root, i, apo, seed)
    fig = plot_metric(
        metric_table(load_jobs([root]), "policy/gold_reward"),
        "policy/gold_reward",
        tmp_path / "m.png",
        "game.apo_coeff=0",
    )
    (ax,) = fig.axes
    (band,) = ax.collections  # the baseline's band only
    assert band.get_facecolor()[0][:3] == pytest.approx(ax.lines[0].get_color()[:3])
    assert ax.lines[0].get_linestyle() == "--"
    assert _legend_texts(fig) == ["game.apo_coeff=0 (n=3)", "game.apo_coeff=1.0 (n=2)"]


def test_zscores_by_hand():
    z = zscores([1.0, 2.0, 3.0])  # mean 2, population s.d. sqrt(2/3)
    assert z == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert zscores([5.0, 5.0]) == [] and zscores([1.0]) == []


def test_histograms_put_each_rm_on_its_own_scale(tmp_path: Path):
    root = tmp_path / "s"
    _job(root, 0, "1.0", 0, scores=[0.0, 1.0, 2.0])
    _job(root, 1, "1.0", 1, scores=[100.0, 200.0, 300.0])  # another RM, another scale
    _job(root, 2, "1.0", 2, scores=[4.0, 4.0, 4.0])  # no spread: cannot be normalised, left out
    fig = plot_reward_histograms(load_jobs([root]), tmp_path / "h.png")
    (ax,) = fig.axes
    (outline,) = ax.patches
    xs = outline.get_xy()[:, 0]
    # both RMs become (-1.22, 0, 1.22); raw pooling would span 0..300
    assert (xs.min(), xs.max()) == (pytest.approx(-math.sqrt(1.5)), pytest.approx(math.sqrt(1.5)))
    assert "z-scored per job" in ax.get_xlabel().replace("\n", " ")
    assert _legend_texts(fig) == [f"{APO_GROUP} (n=2)"]


def _many_groups(root: Path) -> None:
    """12 groups (6 objectives x baseline / APO) with a long shared override, 2 seeds of RJS."""
    num = 0
    for objective in ("rjs", "rrhf", "dpo", "ipo", "slic", "lipo"):
        for apo in ("0", "1.0"):
            for seed in (0, 1) if objective == "rjs" else (0,):
                extra = (f"objective={objective}", "data.root=/data/shared/apo_files/hh_rlhf_v2")
                _job(root, num, apo, seed, extra=extra, scores=[0.0, 1.0, 3.0 + num])
                num += 1


@pytest.mark.parametrize("many", [False, True], ids=["2 groups", "12 groups"])
def test_plots_are_pngs_with_every_text_inside_the_figure(sweep: Path, tmp_path: Path, many):
    root = tmp_path / "many" if many else sweep
    if many:
        _many_groups(root)
    jobs, baseline = load_jobs([root]), "game.apo_coeff=0"
    figs = {
        "metric": plot_metric(
            metric_table(jobs, "rm/onpolicy/acc"), "rm/onpolicy/acc", tmp_path / "m.png", baseline
        ),
        "reliability": plot_reliability(jobs, tmp_path / "r.png", baseline),
        "histograms": plot_reward_histograms(jobs, tmp_path / "h.png", baseline),
    }
    for name, fig in figs.items():
        assert _outside(fig) == [], name
        tight = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
        assert tight.x0 >= -0.01 and tight.y0 >= -0.01, name
        assert tight.x1 <= fig.get_figwidth() + 0.01 and tight.y1 <= fig.get_figheight() + 0.01
        (legend,) = fig.legends
        ax_box = fig.axes[0].get_window_extent()
        box = legend.get_window_extent()
        # beside the axes for a few groups, below them for many
        assert box.y1 <= ax_box.y0 if many else box.x0 >= ax_box.x1, name
        texts = _legend_texts(fig)
        if many:
            title = legend.get_title().get_text()
            assert "".join(title.split()) == "allgroups:data.root=/data/shared/apo_files/hh_rlhf_v2"
            # by stem (sorted), each baseline first: a colour's entries are adjacent
            assert len(texts) == 12 and texts[6:10] == [
                "game.apo_coeff=0 objective=rjs (n=2)",
                "game.apo_coeff=1.0 objective=rjs (n=2)",
                "game.apo_coeff=0 objective=rrhf (n=1)",
                "game.apo_coeff=1.0 objective=rrhf (n=1)",
            ]
        else:
            # the baseline's seed 0 scored all its samples alike (no spread to normalise by),
            # so its histogram pools 2 seeds
            n_base = 2 if name == "histograms" else 3
            assert texts == [f"game.apo_coeff=0 (n={n_base})", "game.apo_coeff=1.0 (n=3)"], name
    for png in ("m.png", "r.png", "h.png"):
        with Image.open(tmp_path / png) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] >= 900


def test_any_tabulated_metric_can_be_plotted(sweep: Path, tmp_path: Path):
    out = tmp_path / "r"
    assert (
        main([str(sweep), "--out", str(out), "--metrics", "rm/val/acc", "--plot", "rm/val/acc"])
        == 0
    )
    assert (out / "rm_val_acc.png").read_bytes()[:4] == b"\x89PNG"
    assert "![rm/val/acc](rm_val_acc.png)" in (out / "report.md").read_text()


def test_panels_put_each_task_in_its_own_axes_with_one_legend(tmp_path: Path):
    from apo.report.panels import plot_panels

    root = tmp_path / "sweep"
    num = 0
    for task, seeds in (("a", (0, 1, 2)), ("b", (0, 1))):
        for apo in ("0", "1.0"):
            for seed in seeds:
                _job(root, num, apo, seed, extra=("objective=rjs", f"task={task}"), final=0.5)
                num += 1
    table = metric_table(find_jobs(root), "policy/gold_reward")
    assert len(table) == 4  # (task, apo_coeff)
    fig = plot_panels(table, "policy/gold_reward", tmp_path / "p.png", "task", "game.apo_coeff=0")
    assert [ax.get_title() for ax in fig.axes] == ["task=a (3 seeds)", "task=b (2 seeds)"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    # one legend for both panels, the task left out of its entries; the same style in both
    assert _legend_texts(fig) == ["game.apo_coeff=0", "game.apo_coeff=1.0"]
    styles = [[(ln.get_color(), ln.get_linestyle()) for ln in ax.get_lines()] for ax in fig.axes]
    assert styles[0] == styles[1] and styles[0][0][1] == "--"
    assert _outside(fig) == []
    assert Image.open(tmp_path / "p.png").size[0] > 0
