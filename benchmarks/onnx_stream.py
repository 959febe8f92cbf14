"""One streaming step exported to ONNX and run with onnxruntime, against PyTorch over a stream of random tokens.

Expected: the logits agree within 1e-4 at every step and the carried state keeps one size; the median time per step
of each is reported beside. The step of a saved model (``--model``, e.g. the one ``mambavl demo --task streaming``
trains) is exported with :func:`mambavl.export.export_streaming_step`; ``--steps`` steps of ``f`` random video tokens
go through onnxruntime and through :class:`~mambavl.MambaVLStreamer`.

    python benchmarks/onnx_stream.py --model runs/demo/run/model
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from stream_vs_reread import feature_steps

from mambavl.export import OnnxStreamingSession, export_streaming_step
from mambavl.streaming import MambaVLStreamer
from mambavl.streaming_cli import _load


def main() -> None:
    p = harness.parser(__doc__, "10 steps")
    p.add_argument("--model", type=Path, required=True, help="a saved MambaVL folder (model + processor)")
    p.add_argument("--steps", type=int, default=100, help="stream length in steps (default: %(default)s)")
    p.add_argument("--tokens-per-step", type=int, help="f (default: the model's pool window, one window's tokens)")
    args = p.parse_args()
    args.steps = 10 if args.quick else args.steps
    if args.steps < 1:
        p.error("--steps must be >= 1")
    # the heads pool one step's tokens: f given, or the encoder's tokens of one window (the model's pool window)
    model, processor = _load(args.model, str(args.tokens_per_step or "auto"))
    f = args.tokens_per_step or model.config.pool_window
    questions = processor(video_features=np.zeros((1, 1, 1), np.float32))  # the export reads only the questions
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        exported = export_streaming_step(model, Path(tmp) / "step.onnx", question_inputs=questions, tokens_per_step=f)
        export_s, onnx_mb = time.perf_counter() - start, exported.path.stat().st_size / 2**20
        session, streamer = OnnxStreamingSession(exported.path), MambaVLStreamer(model, processor, stride=f)
        worst, seconds, sizes = 0.0, [], set()
        for tokens in feature_steps(model, args.steps, f):
            start = time.perf_counter()
            (step,) = streamer.push_features(tokens[0])
            middle = time.perf_counter()
            verb, noun = session.step(tokens.numpy())
            seconds.append((middle - start, time.perf_counter() - middle))  # (PyTorch, onnxruntime)
            diffs = (verb[0] - step.verb_logits.numpy(), noun[0] - step.noun_logits.numpy())
            worst = max(worst, *(float(np.abs(d).max()) for d in diffs))
            sizes.add(session.nbytes)
    report = {
        "model": str(args.model), "steps": args.steps, "tokens_per_step": f, "max_abs_logit_diff": worst,
        "torch_ms_per_step": 1000 * float(np.median([t for t, _ in seconds])),
        "onnx_ms_per_step": 1000 * float(np.median([t for _, t in seconds])),
        "state_bytes": sorted(sizes), "onnx_mb": onnx_mb, "export_s": export_s,
    }  # fmt: skip
    text = (
        f"{args.steps} steps of {f} video tokens: largest logit difference between onnxruntime and PyTorch "
        f"{worst:.1e}; median time per step {report['onnx_ms_per_step']:.1f} ms (onnxruntime) and "
        f"{report['torch_ms_per_step']:.1f} ms (PyTorch); carried state {', '.join(f'{b:,}' for b in sorted(sizes))} "
        f"bytes at every step; the .onnx file {onnx_mb:.2f} MiB, exported in {export_s:.1f} s. Command: "
        f"`{harness.command_line()}` ({harness.describe(harness.machine_info())})."
    )
    harness.write_results(args.output_dir, "onnx_stream", payload=report, markdown=text)
    print(text)


if __name__ == "__main__":
    main()
