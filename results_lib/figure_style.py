"""How the figures draw a method and its seeds, the same in every figure.

- :func:`method_color`: a fixed colour per (adapter, r), a pure function of the two (no dependence on what else a
  figure shows): each adapter has a hue, and the rank sets the lightness, one step darker per doubling of r, so LoRA
  r = 8 and r = 64 are two blues three steps apart; a rank that is not a power of two is desaturated, so ranks less
  than an octave apart (16 and 21) differ in colour too. :func:`method_linestyle` adds a secondary cue (powers of
  two solid, other ranks dashed).
- :func:`band_bounds`: the range a mean ± std band is clipped to (percentages to [0, 100], losses to ≥ 0,
  perplexities to ≥ 1), so a band never claims an impossible value.
- :func:`uuid_chance_accuracy`: the character accuracy of a uniform guess over the value alphabet.
- :func:`draw_seed_points`: each seed's own value as a small marker where a method has few seeds
  (n ≤ ``SEED_POINTS_MAX_N``), so the spread behind a mean ± std of 2 or 3 runs is visible.
"""
from __future__ import annotations

import colorsys
import math
import string
from typing import Sequence

from .metrics import metric_spec

# (hue in degrees, saturation, lightness offset) of each adapter's colour family; FFT (no rank) is black. The
# offsets darken the hues that look light on white (yellow, cyan, green) at the same HLS lightness.
FAMILIES = {"lora": (212, 0.80, 0.0), "relora": (186, 0.80, -0.06), "asylora": (250, 0.55, 0.0),
            "loraplus": (48, 0.85, -0.10), "dora": (27, 0.90, 0.0), "hira": (128, 0.60, -0.04),
            "miss": (286, 0.50, 0.0), "mora": (356, 0.78, 0.0), "remora": (322, 0.62, 0.0)}
FFT_COLOR = "#000000"
OTHER_COLOR = "#808080"
# Lightness of r = 8 and its change per doubling of r (darker for a larger rank), within [LIGHTEST, DARKEST].
LIGHTNESS_R8, LIGHTNESS_PER_OCTAVE, LIGHTEST, DARKEST = 0.64, 0.085, 0.72, 0.20
LIGHTNESS_NO_RANK = 0.45
# A rank that is not a power of two (7, 15, 21, ...) is drawn desaturated (times this), so it stands apart from the
# power of two next to it, whose lightness is close.
OFF_OCTAVE_SATURATION = 0.6
SEED_POINTS_MAX_N = 3
SEED_POINTS_GID = "seed_points"
BAND_GID = "std_band"
CHANCE_GID = "chance"

# The values of the UUID task are ``str(uuid.UUID(...))`` (tasks/uuid.py): 32 lowercase hexadecimal digits in fixed
# 8-4-4-4-12 groups separated by hyphens.
UUID_VALUE_ALPHABET = "".join(sorted(set(string.hexdigits.lower())))


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in rgb)


def method_lightness(r: int | None) -> float:
    if r is None or r <= 0:
        return LIGHTNESS_NO_RANK
    return min(LIGHTEST, max(DARKEST, LIGHTNESS_R8 - LIGHTNESS_PER_OCTAVE * (math.log2(r) - 3)))


def method_color(adapter: str, r: int | None = None) -> str:
    """The colour (``"#rrggbb"``) of ``adapter`` at rank ``r``; ``r=None`` gives the family's middle shade (used
    where one mark stands for an adapter at whatever rank, and for FFT)."""
    if adapter == "fft":
        return FFT_COLOR
    if adapter not in FAMILIES:
        return OTHER_COLOR
    hue, saturation, offset = FAMILIES[adapter]
    lightness = max(0.1, method_lightness(r) + offset)
    if not _power_of_two(r):
        saturation *= OFF_OCTAVE_SATURATION
    return _hex(colorsys.hls_to_rgb(hue / 360.0, lightness, saturation))


def _power_of_two(r: int | None) -> bool:
    return r is None or r <= 0 or (r & (r - 1)) == 0


def method_linestyle(r: int | None) -> str:
    """Solid for no rank or a power of two, dashed otherwise (the paper's ranks are powers of two; the CPU
    reproduction's equal-parameter ranks such as 7, 15 and 21 are not)."""
    return "-" if _power_of_two(r) else "--"


def band_bounds(metric: str, scale: float = 1.0) -> tuple[float | None, float | None]:
    """``(lower, upper)`` that a plotted value of ``metric`` (already multiplied by ``scale``) can take: [0, 100] %
    for a percentage, ≥ 1 for a perplexity, ≥ 0 for a loss; ``None`` where there is no bound."""
    if metric_spec(metric).percent:
        return 0.0, 1.0 * scale
    if "ppl" in metric:
        return 1.0 * scale, None
    if "loss" in metric:
        return 0.0, None
    return None, None


def clip_band(means: Sequence[float], stds: Sequence[float], bounds: tuple[float | None, float | None]
              ) -> tuple[list[float], list[float]]:
    """The lower and upper edges ``mean ∓ std`` of a band, each clipped to ``bounds``."""
    lo, hi = bounds
    lower = [m - s if lo is None else max(lo, m - s) for m, s in zip(means, stds)]
    upper = [m + s if hi is None else min(hi, m + s) for m, s in zip(means, stds)]
    if hi is not None:
        lower = [min(hi, v) for v in lower]
    if lo is not None:
        upper = [max(lo, v) for v in upper]
    return lower, upper


def uuid_chance_accuracy(alphabet: str = UUID_VALUE_ALPHABET) -> float:
    """Character accuracy (a fraction) of guessing each character uniformly from ``alphabet``: 1/16 for hex digits.
    (A guesser that also knows the uuid4 layout, i.e. the hyphens and the version digit, would score more.)"""
    return 1.0 / len(set(alphabet))


def chance_label(alphabet: str = UUID_VALUE_ALPHABET) -> str:
    return f"chance (uniform guess of 1 in {len(set(alphabet))} hex digits)"


def draw_chance_line(ax, scale: float = 100.0) -> None:
    """A horizontal dashed line at the UUID chance accuracy (times ``scale``), in the legend as "chance …"."""
    ax.axhline(uuid_chance_accuracy() * scale, color="#555555", linestyle="--", linewidth=1.0, zorder=1,
               label=chance_label(), gid=CHANCE_GID)


def draw_seed_points(ax, xs: Sequence[float], ys: Sequence[float], color: str) -> None:
    """Each seed's value as a small marker (white edge, above the lines), left out of the legend."""
    if xs:
        ax.scatter(list(xs), list(ys), s=16, color=color, edgecolors="white", linewidths=0.5, zorder=3,
                   label="_seed values", gid=SEED_POINTS_GID)


def fitted_limits(values: Sequence[float], pad: float = 0.06) -> tuple[float, float] | None:
    """``(low, high)`` around ``values`` with ``pad`` of their span on each side (None without values)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = high - low or abs(high) * 0.02 or 1.0
    return low - pad * span, high + pad * span
