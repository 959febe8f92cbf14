"""Draw the diagram of what a MambaVLCache holds (offline, with matplotlib).

    python docs/_static/make_cache_diagram.py      # writes docs/_static/streaming_cache.png

The PNG is committed; rerun this script after changing it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import make_diagram  # the sibling script (this folder is on sys.path when a script in it runs)
import matplotlib.pyplot as plt
from make_diagram import HERE, NEUTRAL, NEUTRAL_EDGE, TEXT, TEXT_EDGE, VIDEO, VIDEO_EDGE
from make_diagram import SHARED as STATE
from make_diagram import SHARED_EDGE as STATE_EDGE
from matplotlib.patches import FancyBboxPatch

# make_diagram's boxes and arrows, a little finer for this denser picture
box = partial(make_diagram.box, size=9.5, linewidth=1.3)
arrow = partial(make_diagram.arrow, width=1.2, scale=12)


def cache_diagram(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 6.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    ax.text(5.5, 5.95, "One streaming call: new video tokens in, logits out, the cache carried", ha="center",
            fontsize=12, weight="bold")  # fmt: skip

    # the call, left to right
    box(ax, 1.1, 4.9, 1.8, 0.8, "new video tokens\n(b, l ≥ 1, D)", VIDEO, VIDEO_EDGE)
    for i, y in enumerate((3.8, 2.5)):
        box(ax, 3.6, y, 2.6, 0.9, f"fusion layer {i + 1}: video mixer\nconv (k taps) → selective scan", VIDEO,
            VIDEO_EDGE)  # fmt: skip
    ax.text(3.6, 1.85, "⋮  num_fusion_layers", ha="center", fontsize=10)
    box(ax, 3.6, 1.1, 2.6, 0.8, "final norm → fused video\ntokens y^V (b, l, D)", VIDEO, VIDEO_EDGE)
    arrow(ax, (1.1, 4.5), (2.3, 3.9))
    arrow(ax, (3.6, 3.35), (3.6, 2.95))
    arrow(ax, (3.6, 2.05), (3.6, 1.55), dashed=True)

    # the cache, right
    ax.add_patch(
        FancyBboxPatch((6.0, 0.35), 4.75, 5.15, boxstyle="round,pad=0.02,rounding_size=0.12", facecolor="white",
                       edgecolor=STATE_EDGE, linewidth=1.8)
    )  # fmt: skip
    ax.text(8.375, 5.25, "MambaVLCache (fixed size)", ha="center", fontsize=11, weight="bold", color=STATE_EDGE)
    for i, y in enumerate((4.35, 3.05)):
        box(ax, 8.375, y, 4.3, 0.95,
            f"layer {i + 1}:  conv_states[{i}]  (b, d_inner, k−1)  last inputs\n"
            f"ssm_states[{i}]  (b, d_inner, N)  scan state h_t", STATE, STATE_EDGE, size=9)  # fmt: skip
        arrow(ax, (4.9, y - 0.55 + 0.1 * (1 - i) + 0.0), (6.2, y), color=STATE_EDGE, rad=-0.15)
        arrow(ax, (6.2, y - 0.25), (4.9, y - 0.65), color=STATE_EDGE, rad=-0.15)
    box(ax, 8.375, 1.95, 4.3, 0.8,
        "pool_state: running sum (b, D) + seen_tokens\nor the last pool_window tokens (b, W, D)", NEUTRAL,
        NEUTRAL_EDGE, size=9)  # fmt: skip
    box(ax, 8.375, 0.95, 4.3, 0.8,
        "questions (b, L, D) + masks, set at the first call:\nfused ('separate') or encoded ('joint')", TEXT,
        TEXT_EDGE, size=9)  # fmt: skip
    arrow(ax, (4.9, 1.1), (6.2, 1.9), color=NEUTRAL_EDGE)

    # heads
    box(ax, 1.1, 0.75, 1.8, 0.9, "pool(y^V) + pool(y^T)\n→ verb / noun heads", NEUTRAL, NEUTRAL_EDGE)
    arrow(ax, (2.3, 1.05), (2.0, 1.05))
    arrow(ax, (6.2, 0.6), (2.0, 0.45), color=TEXT_EDGE)
    ax.text(5.45, 4.55, "write", fontsize=8, color=STATE_EDGE, ha="center")
    ax.text(5.45, 3.55, "read", fontsize=8, color=STATE_EDGE, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    cache_diagram(HERE / "streaming_cache.png")
    print(f"wrote {HERE / 'streaming_cache.png'}")
