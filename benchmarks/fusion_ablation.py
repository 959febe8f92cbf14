"""Fusion ablation on the synthetic benchmark: Mamba vs transformer vs MLP fusion, same budget and seeds.

Compares held-out accuracy, not speed. Target (the paper's ablation, in structure): MLP < transformer < Mamba.
Each fusion trains the ``mambavl demo`` recipe (:mod:`mambavl.demo`) for the same epochs with the same seeds, data
and schedule; the table gives held-out verb / noun / action top-1 and action top-5, mean ± std over the seeds.

    python benchmarks/fusion_ablation.py                 # 3 seeds, ~20 min on 2 CPU cores
    python benchmarks/fusion_ablation.py --quick --output-dir /tmp/ablation   # smoke run
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from mambavl.demo import build_demo, evaluate_demo, train_demo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

FUSIONS = {
    "mamba": {"fusion_type": "mamba"},
    "transformer 6x4": {"fusion_type": "transformer", "fusion_transformer_depth": 6, "fusion_transformer_heads": 4},
    "mlp": {"fusion_type": "mlp"},
}
COLUMNS = ("verb_top1", "noun_top1", "action_top1", "verb_top5", "noun_top5", "action_top5")
SHOWN = ("verb_top1", "noun_top1", "action_top1", "action_top5")  # the table's accuracy columns


def train(args, name: str, seed: int) -> dict:
    """One fusion trained and evaluated at one seed: an entry of the JSON's ``runs``."""
    setup = build_demo(args.work_dir / f"data-seed{seed}", num_videos=args.num_videos, seed=seed, **FUSIONS[name])
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    run_dir = args.work_dir / f"{name.replace(' ', '_')}-seed{seed}"
    start = time.time()  # training only (the first fusion of a seed also generates that seed's dataset)
    steps = train_demo(setup, run_dir, epochs=args.epochs, seed=seed, progress_bar=False).global_step
    train_seconds = round(time.time() - start, 1)
    scores = evaluate_demo(setup.model, setup.processor, setup)
    metrics = {k: round(scores[k], 2) for k in COLUMNS}
    print(f"{name} (seed {seed}): " + ", ".join(f"{k}={metrics[k]}" for k in COLUMNS), flush=True)
    return {"fusion": name, "seed": seed, **FUSIONS[name], "trainable_params": trainable,
            "train_seconds": train_seconds, "steps": steps, **metrics}  # fmt: skip


def summary(name: str, runs: list[dict], seeds: list[int]) -> dict:
    """A fusion's row: the mean and sample standard deviation (0 for one seed) of its runs."""
    mine = [r for r in runs if r["fusion"] == name]
    row = {"fusion": name, **FUSIONS[name], "trainable_params": mine[0]["trainable_params"], "seeds": seeds,
           "train_seconds": statistics.mean(r["train_seconds"] for r in mine), "steps": mine[0]["steps"]}  # fmt: skip
    for k in COLUMNS:
        values = [r[k] for r in mine]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        row[k], row[f"{k}_std"] = round(statistics.mean(values), 2), round(std, 2)
    return row


def main() -> None:
    p = harness.parser(__doc__, "8 videos, 1 epoch: a smoke run")
    p.add_argument("--epochs", type=int, default=30, help="training epochs of every run (default: %(default)s)")
    p.add_argument("--seeds", type=harness.int_list, default="0,1,2",
                   help="comma-separated; each seeds a dataset, initialisation and training order")  # fmt: skip
    p.add_argument("--num-videos", type=int, default=64, help="synthetic videos per dataset (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/fusion_ablation"), help="datasets and checkpoints")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.num_videos = 1, 8
    runs = [train(args, name, seed) for seed in args.seeds for name in FUSIONS]
    rows = [summary(name, runs, args.seeds) for name in FUSIONS]
    many = len(args.seeds) > 1
    cells = [[r["fusion"], *(f"{r[k]:.1f}" + (f" ± {r[k + '_std']:.1f}" if many else "") for k in SHOWN),
              f"{r['trainable_params']:,}", f"{r['train_seconds']:.0f}"] for r in rows]  # fmt: skip
    table = harness.markdown_table(["Fusion", "Verb top-1", "Noun top-1", "Action top-1", "Action top-5",
                                    "Trainable params", "Train time (s)"], cells)  # fmt: skip
    spread = (f"mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}; each seed draws its own "
              "synthetic dataset, initialisation and training order, and every fusion sees the same ones" if many
              else f"one seed ({args.seeds[0]}): differences of a few points may be seed noise")  # fmt: skip
    machine, command = harness.machine_info(), harness.command_line()
    report = "\n".join([
        "# Fusion ablation on the synthetic egocentric benchmark", "",
        f"Held-out split of `mambavl demo`'s synthetic dataset ({args.num_videos} videos, 8 verbs x 8 nouns), each "
        f"fusion trained {args.epochs} epochs: tiny 3-D CNN video encoder, frozen MiniLM embeddings, fusion width 64, "
        f"label-free questions at evaluation. Percent, {spread}. Train time: mean seconds per run.", "", table, "",
        f"Command: `{command}` ({harness.describe(machine)}). Per-seed results are in `fusion_ablation.json`.", "",
    ])  # fmt: skip
    payload = {"command": command, "epochs": args.epochs, "seeds": args.seeds, "num_videos": args.num_videos,
               "python": machine["python"], "torch": machine["torch"], "results": rows, "runs": runs}  # fmt: skip
    harness.write_results(args.output_dir, "fusion_ablation", payload=payload, markdown=report)
    print("\n" + table)


if __name__ == "__main__":
    main()
