"""Figure builders on the fixture records: the expected figures, curves, merge lines, panels and bars, and what makes
them readable at n = 3: a colour per method at its rank, bands clipped to the metric's range, the chance level,
each seed's value, the zoomed pretraining panel and the per-layer ceiling of the singular-value counts."""
from __future__ import annotations

import itertools
import string

import pytest

from results_lib import parse_record
from results_lib.figure_style import (BAND_GID, SEED_POINTS_GID, UUID_VALUE_ALPHABET, band_bounds, method_color,
                                      method_linestyle, uuid_chance_accuracy)
from results_lib.figures import (CEILING_LABEL, ablation_figures, merge_every, pretrain_figures,
                                 singular_value_figures, uuid_figures)
from results_lib.sv_records import architecture_shape
from tests.fixtures.records.make_fixture_records import record


def _main_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith(("chance", "_"))]


def _collections(ax, gid):
    return [c for c in ax.collections if c.get_gid() == gid]


def _seed_offsets(ax):
    return [tuple(xy) for c in _collections(ax, SEED_POINTS_GID) for xy in c.get_offsets()]


def _band_ys(ax):
    return [y for c in _collections(ax, BAND_GID) for path in c.get_paths() for _, y in path.vertices]


def _uuid(run_id, adapter, r, seed, accs, losses, lr=1e-3, mora_type=None):
    steps = (10, 20, 30)
    history = [{"step": s, "char_acc": a, "train_loss": loss} for s, a, loss in zip(steps, accs, losses)]
    final = {"char_acc": accs[-1], "train_loss": losses[-1]}
    return parse_record(record(run_id, "uuid", adapter, r, mora_type, seed, lr, final, history, 1000),
                        f"{run_id}.json")


def test_uuid_figures_one_curve_per_method_with_seed_counts(fixture_records):
    records, _ = fixture_records
    figures = dict(uuid_figures(records))
    assert sorted(figures) == ["uuid_char_acc__tiny", "uuid_train_loss__tiny"]
    ax = figures["uuid_char_acc__tiny"].axes[0]
    labels = [line.get_label() for line in _main_lines(ax)]
    assert labels == ["FFT, lr 1e-3, n=2", "LoRA r=8, lr 3e-3, n=1", "DoRA r=8, lr 3e-3, n=1",
                      "MoRA r=8 (rope), lr 3e-3, n=3", "MoRA r=256 (sharing), lr 3e-3, n=1"]
    fft = ax.get_lines()[0]
    assert list(fft.get_xdata()) == [50, 100, 150, 200]
    assert abs(fft.get_ydata()[-1] - 78.5) < 1e-9  # mean of the reporting seeds 1, 2 (78, 79 %); seed 0 chose the lr
    assert len(_collections(ax, BAND_GID)) == 2  # std bands only where several reporting seeds (FFT, MoRA r=8)
    assert ax.get_xlabel() == "optimizer step" and "(%)" in ax.get_ylabel()


def test_each_method_at_its_rank_has_its_own_fixed_colour():
    runs = [_uuid(f"l{r}-s{s}", "lora", r, s, [0.2, 0.3, 0.4 + 0.01 * s], [2.0, 1.0, 0.5]) for r in (8, 64)
            for s in (0, 1)]
    runs += [_uuid("m8", "mora", 8, 0, [0.2, 0.3, 0.5], [2.0, 1.0, 0.4], mora_type="rope")]
    figures = dict(uuid_figures(runs))
    acc, loss = (_main_lines(figures[f"uuid_{m}__tiny"].axes[0]) for m in ("char_acc", "train_loss"))
    colors = [line.get_color() for line in acc]
    assert len(set(colors)) == 3  # LoRA r=8, LoRA r=64 and MoRA r=8: three colours, not one per adapter
    assert colors == [line.get_color() for line in loss]  # the same colour in every figure
    assert colors == [method_color("lora", 8), method_color("lora", 64), method_color("mora", 8)]
    # a pure function of (adapter, r): every combination distinct, FFT black, the same on every call
    combos = list(itertools.product(["lora", "dora", "hira", "miss", "mora", "relora", "remora", "loraplus",
                                     "asylora"], [7, 8, 15, 16, 21, 32, 64, 128, 256]))
    assert len({method_color(a, r) for a, r in combos}) == len(combos)
    assert method_color("fft") == "#000000" and method_color("lora", 8) == method_color("lora", 8)
    assert method_linestyle(16) == "-" and method_linestyle(21) == "--"


def test_std_bands_are_clipped_to_the_metrics_range():
    # two seeds at 100 % and 40 %: mean 70 ± 42 would reach 112 %; losses 0.05 and 1.5: mean − std < 0
    runs = [_uuid("a-s0", "lora", 8, 0, [0.9, 1.0, 1.0], [0.05, 0.05, 0.05]),
            _uuid("a-s1", "lora", 8, 1, [0.1, 0.2, 0.4], [1.5, 1.5, 1.5])]
    figures = dict(uuid_figures(runs))
    acc = _band_ys(figures["uuid_char_acc__tiny"].axes[0])
    assert acc and min(acc) >= 0.0 and max(acc) == pytest.approx(100.0)
    loss = _band_ys(figures["uuid_train_loss__tiny"].axes[0])
    assert loss and min(loss) == pytest.approx(0.0)
    assert band_bounds("char_acc", 100.0) == (0.0, 100.0) and band_bounds("val_ppl") == (1.0, None)
    assert band_bounds("train_loss") == (0.0, None)


def test_uuid_accuracy_has_the_chance_line_of_the_hex_alphabet(fixture_records):
    from tasks.uuid import make_uuid_pairs

    # the alphabet is that of the task's values (uuid4 strings: hex digits and hyphens)
    seen = {c for _, value in make_uuid_pairs(200, seed=0) for c in value} - {"-"}
    assert seen == set(UUID_VALUE_ALPHABET) == set(string.hexdigits.lower())
    assert uuid_chance_accuracy() == 1 / len(UUID_VALUE_ALPHABET) == 1 / 16
    records, _ = fixture_records
    figures = dict(uuid_figures(records))
    chance = [line for line in figures["uuid_char_acc__tiny"].axes[0].get_lines()
              if line.get_label().startswith("chance")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [100 / 16, 100 / 16]
    legend = figures["uuid_char_acc__tiny"].axes[0].get_legend().get_texts()
    assert [t.get_text() for t in legend if t.get_text().startswith("chance")] == [chance[0].get_label()]
    assert not [line for line in figures["uuid_train_loss__tiny"].axes[0].get_lines()
                if line.get_label().startswith("chance")]
    (_, ablation), = ablation_figures(records)
    assert [line.get_ydata()[0] for line in ablation.axes[0].get_lines() if line.get_label().startswith("chance")] \
        == [100 / 16]


def test_each_seeds_final_value_is_marked_where_n_is_at_most_3(fixture_records):
    records, _ = fixture_records
    ax = dict(uuid_figures(records))["uuid_char_acc__tiny"].axes[0]
    # FFT 2 reporting seeds, LoRA 1, DoRA 1, MoRA r=8 3, MoRA r=256 1: one marker per seed, at the last step
    points = _seed_offsets(ax)
    assert len(points) == 2 + 1 + 1 + 3 + 1 and {x for x, _ in points} == {200}
    fft_seeds = sorted(y for c in _collections(ax, SEED_POINTS_GID) for _, y in c.get_offsets()
                       if tuple(c.get_facecolor()[0][:3]) == (0.0, 0.0, 0.0))
    assert fft_seeds == pytest.approx([78.0, 79.0])
    # more than 3 seeds: the mean ± std alone
    many = [_uuid(f"l-s{s}", "lora", 8, s, [0.2, 0.3, 0.4 + 0.01 * s], [2.0, 1.0, 0.5]) for s in range(4)]
    assert _seed_offsets(dict(uuid_figures(many))["uuid_char_acc__tiny"].axes[0]) == []
    # the ablation bars show each seed too
    (_, ablation), = ablation_figures(records)
    assert len(_seed_offsets(ablation.axes[0])) == 1 + 3 + 1 + 1  # sharing, rope (3 seeds), truncation, decouple


def test_pretrain_figure_marks_merges_at_multiples_of_merge_every(fixture_records):
    records, _ = fixture_records
    (stem, fig), = pretrain_figures(records)
    assert stem == "pretrain_loss__tiny"
    ax = fig.axes[0]
    vertical = sorted({(line.get_xdata()[0], line.get_label()) for line in ax.get_lines()
                       if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2}, key=lambda t: t[0])
    assert sorted({x for x, _ in vertical}) == [50, 100, 150]  # last step 200 is the end, not a merge
    assert merge_every(next(rec for rec in records if rec.adapter == "relora")) == 50
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "ReMoRA merge (every 50 steps)" in legend and "ReLoRA merge (every 50 steps)" in legend


def test_pretrain_figure_zooms_on_the_last_two_thirds(fixture_records):
    records, _ = fixture_records
    (_, fig), = pretrain_figures(records)
    full, zoom = fig.axes
    assert zoom.get_xlim() == pytest.approx((200 / 3, 200))
    curves = [line for line in zoom.get_lines() if len(set(line.get_xdata())) > 1]
    assert len(curves) == len([line for line in full.get_lines() if len(set(line.get_xdata())) > 1]) == 4
    inside = [y for line in curves for x, y in zip(line.get_xdata(), line.get_ydata()) if x >= 200 / 3]
    low, high = zoom.get_ylim()
    assert low <= min(inside) and max(inside) <= high  # fitted to the data of the zoomed range ...
    assert (high - low) < 0.5 * (max(full.get_ylim()) - min(full.get_ylim()))  # ... much tighter than the whole run
    assert low > min(y for line in curves for y in line.get_ydata()) or high < max(
        y for line in curves for y in line.get_ydata())


def test_singular_value_figure_has_a_panel_per_module(fixture_records):
    records, _ = fixture_records
    (stem, fig), = singular_value_figures(records)
    assert stem == "singular_values__pretrain_tiny"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["q_proj", "v_proj"]
    mora = next(line for line in visible[0].get_lines() if line.get_label() == "MoRA r=8 (rope)")
    assert list(mora.get_xdata()) == [0, 1] and list(mora.get_ydata()) == [14.0, 22.0]
    # ReMoRA's record uses moRA.analysis's nested layout: module and layer index come from the layer paths
    remora = next(line for line in visible[1].get_lines() if line.get_label() == "ReMoRA r=8 (sharing)")
    assert list(remora.get_xdata()) == [0, 1] and list(remora.get_ydata()) == [14.0, 22.0]
    assert "above 0.1" in fig.get_suptitle()


def test_singular_value_figure_shows_each_layers_ceiling_and_the_seeds(fixture_records):
    records, _ = fixture_records
    (_, fig), = singular_value_figures(records)
    q_proj = next(ax for ax in fig.axes if ax.get_title() == "q_proj")
    ceiling, = [line for line in q_proj.get_lines() if line.get_label() == CEILING_LABEL]
    assert list(ceiling.get_xdata()) == [0, 1] and list(ceiling.get_ydata()) == [128, 128]  # min(d, k) of 128 × 128
    # LoRA has 2 seeds (± std bars and 2 points per layer), MoRA, ReLoRA, ReMoRA 1 each (1 point per layer)
    assert len(_seed_offsets(q_proj)) == 2 * (2 + 1 + 1 + 1)
    assert len(_collections(q_proj, BAND_GID)) == 1


def test_singular_value_ceiling_from_the_architecture_when_no_shape_is_stored():
    architecture = {"hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4, "num_key_value_heads": 2}
    counts = {f"model.layers.{i}.{part}.{m}": 5 + i for i in (0, 1)
              for part, m in (("self_attn", "k_proj"), ("mlp", "down_proj"), ("self_attn", "q_proj"))}
    runs = [parse_record(record(f"gqa-s{s}", "pretrain", "mora", 8, "sharing", s, 1e-3, {"val_ppl": 5.0},
                                [{"step": 10, "train_loss": 2.0}], 100, model="gqa",
                                config={"adapter": {"name": "mora"}, "model": {"architecture": architecture}},
                                analysis={"delta_w_singular_values": {"threshold": 0.1, "sv_above_threshold": counts}}),
                         f"gqa-s{s}.json") for s in (0, 1, 2)]
    assert architecture_shape(runs[0], "k_proj") == [32, 64] and architecture_shape(runs[0], "down_proj") == [64, 172]
    (_, fig), = singular_value_figures(runs)
    ceilings = {ax.get_title(): list(line.get_ydata()) for ax in fig.axes if ax.get_visible()
                for line in ax.get_lines() if line.get_label() == CEILING_LABEL}
    assert ceilings == {"q_proj": [64, 64], "k_proj": [32, 32], "down_proj": [64, 64]}
    assert all(len(_seed_offsets(ax)) == 3 * 2 for ax in fig.axes if ax.get_visible())


def test_ablation_bars_and_not_run_types(fixture_records):
    records, _ = fixture_records
    (stem, fig), = ablation_figures(records)
    assert stem == "ablation__uuid_tiny_r8"
    ax = fig.axes[0]
    heights = [round(patch.get_height(), 6) for patch in ax.patches]
    assert heights == [52.0, 63.0, 27.0, 47.0]  # sharing, rope, truncation, decouple
    assert sum(text.get_text() == "not run" for text in ax.texts) == 3
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "sharing (1)"


def test_pretraining_figures_never_mix_two_experiments():
    """Runs of two lengths get a figure each; the paper's Figures 4/5 use the longest setting."""
    from results_lib.figures import by_experiment, longest_experiment
    from results_lib.records import parse_record
    from tests.fixtures.records.make_fixture_records import minimal_record

    def rec(experiment, steps, seed):
        history = [{"step": s, "train_loss": 3.0 - s / steps} for s in (steps // 2, steps)]
        run_id = f"{experiment}-{seed}"
        return parse_record(minimal_record(run_id=run_id, task="pretrain", model="tiny_scratch", seed=seed,
                                           experiment=experiment, history=history,
                                           config={"trainer": {"max_steps": steps}},
                                           final={"val_ppl": 5.0, "train_loss": 2.0}), run_id)

    runs = [rec("cpu/pretrain_long", 2000, 1), rec("cpu/pretrain_short", 500, 1), rec("cpu/pretrain_short", 500, 2)]
    parts = dict(by_experiment(runs))
    assert sorted(parts) == ["__cpu_pretrain_long", "__cpu_pretrain_short"] and len(parts["__cpu_pretrain_short"]) == 2
    assert by_experiment(runs[1:])[0][0] == ""  # one experiment: the stem stays as it was
    assert {r.experiment for r in longest_experiment(runs)} == {"cpu/pretrain_long"}
    stems = sorted(stem for stem, _ in pretrain_figures(runs))
    assert stems == ["pretrain_loss__tiny_scratch__cpu_pretrain_long", "pretrain_loss__tiny_scratch__cpu_pretrain_short"]
