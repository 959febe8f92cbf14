"""Draw the SSM-Fusion diagrams of the documentation (offline, with matplotlib).

    python docs/_static/make_diagram.py      # writes docs/_static/ssm_fusion.png and docs/_static/scan_modes.png

The PNGs are committed; rerun this script after changing it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = Path(__file__).resolve().parent

VIDEO = "#d7e8fb"  # modality-specific, video
VIDEO_EDGE = "#2f6db5"
TEXT = "#fde3cc"  # modality-specific, question
TEXT_EDGE = "#c0661a"
SHARED = "#dcf2dc"  # shared between the modalities
SHARED_EDGE = "#2e8b3e"
NEUTRAL = "#f2f2f2"
NEUTRAL_EDGE = "#666666"


def box(ax, x, y, w, h, text, face, edge, size=10, weight="normal", linewidth=1.4):
    """A rounded box centred at (x, y)."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=face, edgecolor=edge, linewidth=linewidth,
        )
    )  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight, linespacing=1.35)


def arrow(ax, start, end, color="#444444", style="-|>", width=1.3, rad=0.0, dashed=False, scale=13):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=scale, color=color, linewidth=width,
            connectionstyle=f"arc3,rad={rad}", linestyle="--" if dashed else "-", shrinkA=2, shrinkB=2,
        )
    )  # fmt: skip


def fusion_diagram(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 6.6))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 6.6)
    ax.axis("off")

    yv, yt, ya = 5.0, 1.6, 3.3  # rows: video, question, shared A

    # Inputs.
    box(ax, 1.05, yv, 1.8, 0.95, "video tokens\n$x^V$  (B, F, D)", VIDEO, VIDEO_EDGE)
    box(ax, 1.05, yt, 1.8, 0.95, "masked question\ntokens $x^T$  (B, L, D)", TEXT, TEXT_EDGE)

    # Modality-specific mixer front ends.
    front = "in_proj $\\to$ ($x$, $z$)\ncausal conv1d, SiLU\nx_proj, dt_proj"
    box(ax, 3.35, yv, 2.0, 1.15, "video mixer\n" + front, VIDEO, VIDEO_EDGE, size=9)
    box(ax, 3.35, yt, 2.0, 1.15, "question mixer\n" + front, TEXT, TEXT_EDGE, size=9)
    arrow(ax, (1.95, yv), (2.35, yv))
    arrow(ax, (1.95, yt), (2.35, yt))

    # Input-dependent, modality-specific parameters.
    box(ax, 5.55, yv, 1.75, 0.95, "$B^V, C^V$  (B, F, N)\n$\\Delta^V$  (B, F, D)", VIDEO, VIDEO_EDGE, size=9.5)
    box(ax, 5.55, yt, 1.75, 0.95, "$B^T, C^T$  (B, L, N)\n$\\Delta^T$  (B, L, D)", TEXT, TEXT_EDGE, size=9.5)
    arrow(ax, (4.35, yv), (4.67, yv))
    arrow(ax, (4.35, yt), (4.67, yt))

    # The one shared state matrix.
    box(
        ax, 5.55, ya, 2.3, 1.0, "shared  $A = -\\exp(A_{\\log})$\n(D, N): one parameter",
        SHARED, SHARED_EDGE, size=10, weight="bold",
    )  # fmt: skip

    # Discretisation and scan, per modality.
    scan = (
        "$\\bar A_t = \\exp(\\Delta_t A)$,  $\\bar B_t = \\Delta_t B_t$\n"
        "$h_t = \\bar A_t h_{t-1} + \\bar B_t x_t$\n$y_t = C_t h_t + D x_t$"
    )
    box(ax, 8.2, yv, 2.75, 1.3, "selective scan (video)\n" + scan, VIDEO, VIDEO_EDGE, size=9)
    box(ax, 8.2, yt, 2.75, 1.3, "selective scan (question)\n" + scan, TEXT, TEXT_EDGE, size=9)
    arrow(ax, (6.43, yv), (6.82, yv))
    arrow(ax, (6.43, yt), (6.82, yt))
    arrow(ax, (6.7, ya + 0.3), (7.4, yv - 0.66), color=SHARED_EDGE, width=2.0)
    arrow(ax, (6.7, ya - 0.3), (7.4, yt + 0.66), color=SHARED_EDGE, width=2.0)

    # Gate, projection, pooling.
    box(ax, 10.55, yv, 1.45, 0.95, "$y^V \\cdot$ SiLU($z$)\nout_proj", VIDEO, VIDEO_EDGE, size=9.5)
    box(ax, 10.55, yt, 1.45, 0.95, "$y^T \\cdot$ SiLU($z$)\nout_proj", TEXT, TEXT_EDGE, size=9.5)
    arrow(ax, (9.58, yv), (9.83, yv))
    arrow(ax, (9.58, yt), (9.83, yt))

    box(
        ax, 12.15, ya, 1.55, 1.75,
        "masked mean\npool, add:\n$x_{verb} =$\n$\\mathrm{pool}(y^V)$\n"
        "$+\\,\\mathrm{pool}(y^T_{verb})$\n$\\to$ verb head",
        NEUTRAL, NEUTRAL_EDGE, size=9,
    )  # fmt: skip
    arrow(ax, (11.28, yv - 0.2), (11.75, ya + 0.9))
    arrow(ax, (11.28, yt + 0.2), (11.75, ya - 0.9))

    # Legend.
    for i, (face, edge, label) in enumerate(
        [
            (VIDEO, VIDEO_EDGE, "video stream (its own weights)"),
            (TEXT, TEXT_EDGE, "question stream (its own weights)"),
            (SHARED, SHARED_EDGE, "shared by both streams"),
        ]
    ):
        x = 0.25 + i * 3.9
        ax.add_patch(FancyBboxPatch((x, 0.2), 0.35, 0.25, boxstyle="round,pad=0.01", facecolor=face, edgecolor=edge))
        ax.text(x + 0.5, 0.325, label, va="center", fontsize=10)
    ax.text(
        0.25, 6.35,
        "SSM-Fusion layer (Algorithm 1): the noun question runs through the question mixer the same way, "
        "with the same video tokens",
        fontsize=10.5, weight="bold",
    )  # fmt: skip
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def scan_modes_diagram(path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.9))
    frames, words = 5, 3
    for ax, joint in zip(axes, (False, True), strict=True):
        step = 1.2
        ax.set_xlim(-0.6, (frames + words) * step + 1.2)
        ax.set_ylim(-1.5, 1.9)
        ax.axis("off")
        title = (
            'fusion_scan="joint": one scan over [video; question]'
            if joint
            else 'fusion_scan="separate" (the paper): two scans, one shared A'
        )
        ax.set_title(title, fontsize=10.5, loc="left")
        xs_v = [i * step for i in range(frames)]
        xs_t = [(frames + 0.7 + i) * step for i in range(words)] if joint else [(0.4 + i) * step for i in range(words)]
        y_v, y_t = (0.55, 0.55) if joint else (0.95, -0.55)
        for i, x in enumerate(xs_v):
            box(ax, x, y_v, 0.8, 0.6, f"$h^V_{i + 1}$", VIDEO, VIDEO_EDGE, size=9)
            if i:
                arrow(ax, (x - step + 0.4, y_v), (x - 0.4, y_v))
            ax.text(x, y_v - 0.62, f"$x^V_{i + 1}$", ha="center", fontsize=8.5, color=VIDEO_EDGE)
        for i, x in enumerate(xs_t):
            box(ax, x, y_t, 0.8, 0.6, f"$h^T_{i + 1}$", TEXT, TEXT_EDGE, size=9)
            if i:
                arrow(ax, (x - step + 0.4, y_t), (x - 0.4, y_t))
            ax.text(x, y_t - 0.62, f"$x^T_{i + 1}$", ha="center", fontsize=8.5, color=TEXT_EDGE)
        if joint:
            arrow(ax, (xs_v[-1] + 0.4, y_v), (xs_t[0] - 0.4, y_t), color=SHARED_EDGE, width=2.0)
            ax.text(
                (xs_v[-1] + xs_t[0]) / 2, y_v + 0.55, "question starts\nfrom the video's state",
                ha="center", fontsize=8.5, color=SHARED_EDGE,
            )  # fmt: skip
            ax.text(0, -1.3, "same A everywhere; B, C, Δ still per modality", fontsize=9, color=SHARED_EDGE)
        else:
            ax.text(
                xs_t[-1] + 0.75, -0.55, "$h^T_0 = 0$: the question does not\nread the video's state; the two are\n"
                "coupled through the shared A (and\nthe pooled sum before the heads)",
                va="center", fontsize=8.5, color=SHARED_EDGE,
            )  # fmt: skip
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main() -> None:
    fusion_diagram(HERE / "ssm_fusion.png")
    scan_modes_diagram(HERE / "scan_modes.png")
    print(f"wrote {HERE / 'ssm_fusion.png'} and {HERE / 'scan_modes.png'}")


if __name__ == "__main__":
    main()
