"""Figure builders on the fixture records: the expected figures, curves, merge lines, panels and bars."""
from __future__ import annotations

from results_lib.figures import (ablation_figures, merge_every, pretrain_figures, singular_value_figures,
                                 uuid_figures)


def test_uuid_figures_one_curve_per_method_with_seed_counts(fixture_records):
    records, _ = fixture_records
    figures = dict(uuid_figures(records))
    assert sorted(figures) == ["uuid_char_acc__tiny", "uuid_train_loss__tiny"]
    ax = figures["uuid_char_acc__tiny"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["FFT, lr 1e-3, n=2", "LoRA r=8, lr 3e-3, n=1", "DoRA r=8, lr 3e-3, n=1",
                      "MoRA r=8 (rope), lr 3e-3, n=3", "MoRA r=256 (sharing), lr 3e-3, n=1"]
    fft = ax.get_lines()[0]
    assert list(fft.get_xdata()) == [50, 100, 150, 200]
    assert abs(fft.get_ydata()[-1] - 78.5) < 1e-9  # mean of the reporting seeds 1, 2 (78, 79 %); seed 0 chose the lr
    assert len(ax.collections) == 2  # std bands only for methods with several reporting seeds (FFT, MoRA r=8)
    assert ax.get_xlabel() == "optimizer step" and "(%)" in ax.get_ylabel()


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


def test_ablation_bars_and_not_run_types(fixture_records):
    records, _ = fixture_records
    (stem, fig), = ablation_figures(records)
    assert stem == "ablation__uuid_tiny_r8"
    ax = fig.axes[0]
    heights = [round(patch.get_height(), 6) for patch in ax.patches]
    assert heights == [52.0, 63.0, 27.0, 47.0]  # sharing, rope, truncation, decouple
    assert sum(text.get_text() == "not run" for text in ax.texts) == 3
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "sharing (1)"
