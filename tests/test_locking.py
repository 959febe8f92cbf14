"""One writer per output folder (mambavl.locking): a second run into a folder that a live run is writing fails at
once naming the folder and the holder; a run killed with SIGKILL leaves no lock that blocks ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mambavl.data import load_annotations
from mambavl.locking import OutputDirLockedError, output_dir_lock

REPO = Path(__file__).resolve().parents[1]

# A training run on the synthetic data that checkpoints every step and, after step 2, waits to be killed.
RUN = textwrap.dedent(
    """
    import sys, time
    import torch
    from transformers import BertTokenizer
    from mambavl import Conv3dVideoConfig, MambaVLConfig, MambaVLForActionRecognition, MambaVLProcessor
    from mambavl import MambaVLVideoProcessor
    from mambavl.data import EK100SegmentDataset, MambaVLCollator, generate_synthetic_dataset
    from mambavl.training import TrainingConfig, train
    from tiny import tiny_text_config

    data, output_dir, resume, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "resume", sys.argv[4] == "wait"
    info = generate_synthetic_dataset(data, num_videos=4, segments_per_video=4, size=32)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "?"]
    processor = MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=18, crop_size=16),
        BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}),
        verb_classes=info.verb_names, noun_classes=info.noun_names,
    )
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(MambaVLConfig(
        video_config=Conv3dVideoConfig(channels=[4, 8], hidden_size=16), hidden_size=16, state_size=4,
        text_config=tiny_text_config(), num_verb_classes=info.num_verbs, num_noun_classes=info.num_nouns,
    ))
    dataset = EK100SegmentDataset(info.load_annotations("train"), info.video_source(cache_size=4), num_frames=4)
    config = TrainingConfig(
        output_dir=output_dir, num_epochs=1, batch_size=2, save_steps=1, progress_bar=False,
        resume_from_checkpoint="auto" if resume else None,
    )

    def hold(record):
        if wait and record["global_step"] == 2:
            print("READY", flush=True)
            time.sleep(600)

    result = train(model, dataset, MambaVLCollator(processor, training=True), config, callbacks=[hold])
    print("DONE", result.global_step, flush=True)
    """
)


def start(tmp_path: Path, resume: bool, wait: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "data"), str(tmp_path / "run"), "resume" if resume else "new", "wait" if wait else "go"]
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    folder = tmp_path / "run"
    with output_dir_lock(folder):
        with pytest.raises(OutputDirLockedError) as error, output_dir_lock(folder):
            pass
        message = str(error.value)
        assert str(folder) in message and f"process {os.getpid()}" in message and socket.gethostname() in message
        assert error.value.holder["pid"] == os.getpid()
    with output_dir_lock(folder):  # released at the end of the block, also after an error
        pass
    with pytest.raises(ZeroDivisionError), output_dir_lock(folder):
        1 / 0  # noqa: B018
    with output_dir_lock(folder), output_dir_lock(folder, main_process=False):  # other ranks do not take it
        pass


def test_a_second_run_fails_at_once_and_a_killed_run_does_not_block_resume(tmp_path):
    first = start(tmp_path, resume=False, wait=True)
    try:
        line = first.stdout.readline()
        assert line.strip() == "READY", first.stderr.read()[-3000:] if first.poll() is not None else line
        # a second run into the same folder, while the first one is writing there
        second = start(tmp_path, resume=True, wait=False)
        out, err = second.communicate(timeout=600)
        assert second.returncode != 0 and "DONE" not in out
        assert "OutputDirLockedError" in err and str(tmp_path / "run") in err and f"process {first.pid}" in err
        assert socket.gethostname() in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / ".mambavl.lock.json").exists()  # the dead run's holder record stays behind
    resumed = start(tmp_path, resume=True, wait=False)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    segments = len(load_annotations(tmp_path / "data" / "annotations" / "train.csv"))
    assert out.strip().splitlines()[-1] == f"DONE {segments // 2}"  # batches of 2
    starts = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    starts = [record for record in starts if record["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("step-2")  # the killed run's last checkpoint
    assert not (tmp_path / "run" / ".mambavl.lock.json").exists()  # the resumed run released the folder
