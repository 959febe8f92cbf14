"""One streaming step exported to ONNX and run with onnxruntime, against PyTorch over a stream of random tokens.

Exports the step of a saved model (``--model``, e.g. the one ``mambavl demo --task streaming`` trains) with
:func:`mambavl.export.export_streaming_step`, streams ``--steps`` steps of ``f`` random video tokens through
onnxruntime and through :class:`~mambavl.MambaVLStreamer`, and reports the largest logit difference, the time per
step of each and the size of the carried state. Writes ``benchmarks/results/onnx_stream.{json,md}``.

    python benchmarks/onnx_stream.py --model runs/demo/run/model
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a saved MambaVL folder (model + processor)")
    parser.add_argument("--steps", type=int, default=100, help="stream length in steps (default: %(default)s)")
    parser.add_argument(
        "--tokens-per-step", type=int, default=None, help="f (default: the model's pool window, one window's tokens)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="default: %(default)s")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    from mambavl.export import OnnxStreamingSession, export_streaming_step
    from mambavl.streaming import MambaVLStreamer
    from mambavl.streaming_cli import _load

    # the heads pool one step's tokens: f given, or the encoder's tokens of one window (the model's pool window)
    model, processor = _load(args.model, str(args.tokens_per_step) if args.tokens_per_step else "auto")
    f = args.tokens_per_step or model.config.pool_window
    batch = processor(video_features=np.zeros((1, 1, 1), np.float32))
    questions = {
        k: batch[k] for k in ("verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask")
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        exported = export_streaming_step(model, Path(tmp) / "step.onnx", question_inputs=questions, tokens_per_step=f)
        export_s = time.perf_counter() - start
        onnx_mb = exported.path.stat().st_size / 2**20
        session = OnnxStreamingSession(exported.path)
        streamer = MambaVLStreamer(model, processor, stride=f)
        g = torch.Generator().manual_seed(0)
        worst, t_torch, t_onnx, sizes = 0.0, [], [], set()
        for _ in range(args.steps):
            tokens = torch.randn(1, f, model.config.video_feature_size, generator=g)
            start = time.perf_counter()
            (step,) = streamer.push_features(tokens[0])
            t_torch.append(time.perf_counter() - start)
            start = time.perf_counter()
            verb, noun = session.step(tokens.numpy())
            t_onnx.append(time.perf_counter() - start)
            worst = max(worst, float(np.abs(verb[0] - step.verb_logits.numpy()).max()))
            worst = max(worst, float(np.abs(noun[0] - step.noun_logits.numpy()).max()))
            sizes.add(session.nbytes)
    report = {
        "model": str(args.model), "steps": args.steps, "tokens_per_step": f, "max_abs_logit_diff": worst,
        "torch_ms_per_step": 1000 * float(np.median(t_torch)), "onnx_ms_per_step": 1000 * float(np.median(t_onnx)),
        "state_bytes": sorted(sizes), "onnx_mb": onnx_mb, "export_s": export_s,
    }  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "onnx_stream.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        f"{args.steps} steps of {f} video tokens: largest logit difference between onnxruntime and PyTorch "
        f"{worst:.1e}; median time per step {report['onnx_ms_per_step']:.1f} ms (onnxruntime) and "
        f"{report['torch_ms_per_step']:.1f} ms (PyTorch); carried state {', '.join(f'{b:,}' for b in sorted(sizes))} "
        f"bytes at every step; the .onnx file {onnx_mb:.2f} MiB, exported in {export_s:.1f} s. Command: "
        f"`{' '.join(['python benchmarks/onnx_stream.py', *sys.argv[1:]])}` ({platform.machine()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads)."
    )
    (args.output_dir / "onnx_stream.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
