"""The paper's Figures 2–5 drawn from whatever records match: the paper's model when it has records, else the others
(saying so), and the list of records each figure used."""
from __future__ import annotations

from results_lib import parse_record
from results_lib.figure_style import SEED_POINTS_GID, method_color
from results_lib.paper_figures import (MATRIX_TYPES, figure2, figure3, figure4, figure5, figure5_values,
                                       figure_sources)
from tests.fixtures.records.make_fixture_records import record


def _run(run_id, task, adapter, r, model, lr=1e-3, seed=0, mora_type=None, analysis=None, loss=1.0):
    history = [{"step": s, "train_loss": loss / s} for s in (10, 20, 30)]
    final = {"char_acc": 0.5, "train_loss": loss / 30, "val_ppl": 10.0}
    return parse_record(record(run_id, task, adapter, r, mora_type, seed, lr, final, history, 1, model=model,
                               analysis=analysis), f"{run_id}.json")


def _analysis(offset):
    counts = {f"model.layers.{i}.{part}.{m}": offset + 10 * i + k
              for i in (0, 1) for k, (part, m) in enumerate((("self_attn", "q_proj"), ("mlp", "down_proj")))}
    return {"delta_w_singular_values": {"threshold": 0.1, "sv_above_threshold": counts}}


def test_figure2_and_3_use_the_papers_model_when_it_has_records():
    cpu = [_run("t-fft", "uuid", "fft", None, "tiny"), _run("t-l8", "uuid", "lora", 8, "tiny")]
    (stem, fig), = figure2(cpu)
    assert stem == "paper_fig2_uuid_loss_fft_lora"
    assert "model tiny (no record of the paper's LLaMA-2 7B)" in fig.axes[0].get_title()
    paper = [_run(f"p-l{r}", "uuid", "lora", r, "llama2_7b") for r in (8, 16, 256)] + [
        _run("p-fft", "uuid", "fft", None, "llama2_7b"), _run("p-m8", "uuid", "mora", 8, "llama2_7b", mora_type="rope"),
        _run("p-m256", "uuid", "mora", 256, "llama2_7b", mora_type="sharing")]
    (_, fig), = figure2(cpu + paper)
    ax = fig.axes[0]
    assert "model LLaMA-2 7B;" in ax.get_title()
    assert [line.get_label().split(",")[0] for line in ax.get_lines()] == ["FFT", "LoRA r=8", "LoRA r=16",
                                                                          "LoRA r=256"]
    (_, fig3), = figure3(cpu + paper)
    assert "r = 8 and 256" in fig3.axes[0].get_title()   # r = 16 has no MoRA run: left out
    assert [line.get_label().split(",")[0] for line in fig3.axes[0].get_lines()] == [
        "LoRA r=8", "LoRA r=256", "MoRA r=8 (rope)", "MoRA r=256 (sharing)"]
    assert figure_sources(cpu + paper)["paper_fig2_uuid_loss_fft_lora"] == ["p-fft", "p-l8", "p-l16", "p-l256"]
    # a colour per method at its rank, the same in both figures
    colors = [line.get_color() for line in ax.get_lines()]
    assert colors == [method_color("fft"), method_color("lora", 8), method_color("lora", 16), method_color("lora", 256)]
    assert len(set(colors)) == 4
    assert [line.get_color() for line in fig3.axes[0].get_lines()][:2] == [colors[1], colors[3]]
    # one seed each: each seed's final value is marked
    assert sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == SEED_POINTS_GID) == 4


def test_figure4_one_panel_per_paper_model_and_figure5_bars_per_matrix_type():
    runs = [_run(f"{m}-{a}", "pretrain", a, 128, m, analysis=_analysis(i)) for m in ("llama_250m", "llama_1b")
            for i, a in enumerate(("lora", "mora", "relora", "remora"))]
    (stem, fig), = figure4(runs + [_run("cpu", "pretrain", "lora", 16, "tiny_scratch")])
    assert stem == "paper_fig4_pretrain_loss"
    assert [ax.get_title() for ax in fig.axes] == ["250M", "1B"] and len(fig.axes[0].get_lines()) == 4
    (stem, fig), = figure5(runs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [label for _, label in MATRIX_TYPES]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["LoRA", "MoRA", "ReLoRA", "ReMoRA"]
    values, thresholds = figure5_values([run for run in runs if run.model == "llama_250m"])
    # q_proj of MoRA (offset 1): layers 0 and 1 count 1 and 11 → mean 6; down_proj 2 and 12 → 7
    assert values["mora"] == {"q_proj": 6.0, "down_proj": 7.0} and thresholds == {0.1}
    heights = [patch.get_height() for patch in ax.patches]
    assert heights[:7] == [5.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0]   # LoRA's bars in the paper's order (down = 6th)
    assert "model 250M;" in ax.get_title()
    # each seed's mean over layers marked on its bar (one seed per method; two matrix types in the records)
    seeds = [tuple(xy) for c in ax.collections if c.get_gid() == SEED_POINTS_GID for xy in c.get_offsets()]
    assert len(seeds) == 4 * 2 and any(abs(x - patch_x(ax.patches[0])) < 1e-9 and y == 5.0 for x, y in seeds)
    assert set(figure_sources(runs)["paper_fig5_singular_values"]) == {f"llama_250m-{a}" for a in
                                                                        ("lora", "mora", "relora", "remora")}


def patch_x(patch) -> float:
    return patch.get_x() + patch.get_width() / 2


def test_no_matching_records_no_paper_figure():
    assert figure2([]) == figure3([]) == figure4([]) == figure5([]) == [] and figure_sources([]) == {}
