"""Predict the top-5 actions of a video file with a saved MambaVL model.

    python examples/predict.py --model runs/demo/run/model runs/demo/data/videos/P01_01.mp4
    python examples/predict.py --model runs/demo/run/model runs/demo/data/videos/P01_01.mp4 --start 2 --end 4 --top-k 3

(the model and a video that ``mambavl demo`` writes; any video file works.)

``--model`` is any folder written by ``save_pretrained`` (model and processor), e.g. ``<output-dir>/model`` of a
training run. Frames are sampled evenly over the clip (or the ``--start``/``--end`` range, in seconds) and only those
are decoded. The questions are label-free, so nothing but the video informs the prediction.
"""

from __future__ import annotations

import argparse

from transformers.utils import logging as hf_logging

from mambavl import MambaVLForActionRecognition, MambaVLProcessor
from mambavl.data import decode_frames, read_video_info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="a video file (anything FFmpeg decodes)")
    parser.add_argument("--model", required=True, help="a saved MambaVL folder (model + processor)")
    parser.add_argument("--start", type=float, default=0.0, help="start of the clip in seconds (default: 0)")
    parser.add_argument("--end", type=float, help="end of the clip in seconds (default: the end of the video)")
    parser.add_argument("--top-k", type=int, default=5, help="number of actions (default: 5)")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()  # keep the output to the predictions

    model = MambaVLForActionRecognition.from_pretrained(args.model).eval()
    processor = MambaVLProcessor.from_pretrained(args.model)

    info = read_video_info(args.video)  # frame count and rate
    if info.num_frames < 1:
        parser.error(f"{args.video} has no decodable frame")
    first = round(args.start * info.fps)
    last = info.num_frames - 1 if args.end is None else min(round(args.end * info.fps), info.num_frames - 1)
    if not 0 <= first <= last:
        parser.error(f"--start/--end select no frame of {args.video} ({info.num_frames} frames at {info.fps} fps)")
    # The processor's own temporal sampling, applied before decoding: only these frames are read.
    offsets = processor.video_processor.sample_frame_indices(last - first + 1, processor.video_processor.num_frames)
    frames = decode_frames(args.video, [first + i for i in offsets])  # (T, H, W, 3) uint8

    inputs = processor(videos=[frames])  # pixel_values and label-free verb/noun questions
    actions = model.predict_actions(k=args.top_k, **inputs)[0]
    print(f"{args.video}, {first / info.fps:.2f}-{last / info.fps:.2f} s:")
    for rank, action in enumerate(actions, 1):
        print(f"{rank}. {action['verb']} {action['noun']}  (p = {action['score']:.3f})")


if __name__ == "__main__":
    main()
