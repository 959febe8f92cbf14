"""Training and evaluation loops with 🤗 Accelerate, shared by the ``mambavl`` CLI and the examples.

One loop, readable top to bottom (:func:`train`): AdamW with a warm-up + cosine schedule, mixed precision and
gradient accumulation through Accelerate, a checkpoint every ``save_steps`` optimizer steps, at the end of every
epoch and at the step limit, exact resumption from the last checkpoint (mid-epoch included), a JSON-lines metrics
log, tqdm progress bars and an evaluation after every epoch. A NaN or infinite loss stops the run
(:class:`NonFiniteLossError`, naming the step and the clips) before it reaches the weights. It runs unchanged on one
CPU, one GPU or many processes (``accelerate launch`` / ``torchrun``); ``batch_size`` is always the *global* batch,
split across processes, so a run on two processes follows the trajectory of a run on one, up to floating-point
rounding, when the model draws no random numbers in training (no dropout) and every batch half has as many labels
(the loss is a mean per process, and DDP averages the processes' gradients).

A checkpoint folder ``<output_dir>/checkpoints/step-<N>`` holds Accelerate's state (model, optimizer, scheduler and
RNG states; weights as safetensors), ``trainer_state.json`` (epoch, step, metrics history) and a ``model`` folder
loadable with ``from_pretrained`` (with the processor when one is given). Checkpoints are written to a temporary
folder and renamed when complete, so a run killed while saving never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .data.epic_kitchens import drop_skipped
from .locking import locks_output_dir
from .metrics import IGNORE_INDEX, MetricAccumulator

__all__ = [
    "EpochSampler",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingResult",
    "evaluate",
    "find_last_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"
METRICS_LOG_NAME = "metrics.jsonl"
MODEL_INPUT_NAMES = (
    "pixel_values",
    "video_features",
    "verb_input_ids",
    "verb_attention_mask",
    "noun_input_ids",
    "noun_attention_mask",
    "num_views",  # a multi-view batch's views per clip: the model averages each clip's views' logits
    "verb_labels",
    "noun_labels",
)
LOSS_NAMES = ("loss", "verb_loss", "noun_loss")  # the losses logged (those a model's output has)


@dataclass
class TrainingConfig:
    """Settings of :func:`train`.

    Args:
        output_dir: where checkpoints, the metrics log and the final model go.
        num_epochs: passes over the training set.
        batch_size: global batch size (split across processes; must be divisible by their number).
        eval_batch_size: global evaluation batch size (defaults to ``batch_size``).
        learning_rate: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (never applied to biases, norms, ``A_log`` and ``D``).
        warmup_ratio: fraction of the optimizer steps spent warming up linearly from 0.
        lr_scheduler: ``"cosine"`` (decays to 0) or ``"constant"`` (after warm-up).
        gradient_accumulation_steps: batches whose gradients are summed before each optimizer step.
        max_grad_norm: gradient clipping norm (``None``: no clipping).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (autocast; ``"fp16"`` needs a GPU, and on the CPU
            trains in float32 with a warning).
        seed: seeds dropout, data order and augmentation (the same on every process). The model's initial weights
            are drawn before :func:`train` is called: seed before building it (the ``mambavl`` CLI does).
        num_workers: DataLoader worker processes.
        save_steps: also checkpoint every this many optimizer steps.
        save_each_epoch: checkpoint at the end of every epoch.
        save_total_limit: checkpoints kept (oldest removed first); ``None`` keeps all.
        resume_from_checkpoint: ``None`` (start fresh; an existing checkpoint folder is an error), ``"auto"``
            (resume from the last checkpoint in ``output_dir`` if any), or a checkpoint path.
        logging_steps: optimizer steps between lines of the metrics log.
        eval_each_epoch: evaluate on ``eval_dataset`` after every epoch.
        max_steps: stop after this many optimizer steps (the learning-rate schedule is planned for them; a run
            resumed with a new limit re-plans it for that limit from the step it resumes at). A limit reached
            mid-epoch leaves the epoch incomplete: a resumed run trains on its remaining batches.
        task: ``"recognition"`` (top-1/top-5 accuracies) or ``"anticipation"`` (class-mean top-5 recall).
        metric_for_best_model: evaluation metric tracked as ``best_metric`` in the trainer state.
        progress_bar: show tqdm progress bars (main process only).
        use_cpu: train on the CPU even when an accelerator is present. ``None`` (default): on the CPU when no
            CUDA, XPU or MPS device is available; several CPU processes (``torchrun``/``accelerate launch``) then
            train together over gloo.
    """

    output_dir: str | os.PathLike
    num_epochs: int = 10
    batch_size: int = 8
    eval_batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    num_workers: int = 0
    save_steps: int | None = None
    save_each_epoch: bool = True
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | os.PathLike | None = None
    logging_steps: int = 10
    eval_each_epoch: bool = True
    max_steps: int | None = None
    task: str = "recognition"
    metric_for_best_model: str | None = None
    progress_bar: bool = True
    use_cpu: bool | None = None

    def __post_init__(self) -> None:
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("eval_batch_size", "save_steps", "save_total_limit", "max_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio!r}.")
        if not 0 <= self.weight_decay < float("inf"):  # a negative decay pushes the weights away from 0
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}.")
        if self.max_grad_norm is not None and not 0 < self.max_grad_norm < float("inf"):
            raise ValueError(f"`max_grad_norm` must be positive or None, got {self.max_grad_norm!r}.")
        if self.lr_scheduler not in ("cosine", "constant"):
            raise ValueError(f"`lr_scheduler` must be 'cosine' or 'constant', got {self.lr_scheduler!r}.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"`mixed_precision` must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}.")
        if self.task not in ("recognition", "anticipation"):
            raise ValueError(f"`task` must be 'recognition' or 'anticipation', got {self.task!r}.")
        if self.metric_for_best_model is None:
            self.metric_for_best_model = "action_top1" if self.task == "recognition" else "action_recall5"
        self.output_dir = Path(self.output_dir)


@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Args:
        global_step: optimizer steps taken in total (resumed steps included).
        epochs_completed: full epochs done.
        eval_metrics: metrics of the last evaluation (empty without an evaluation set).
        best_metric: best value of ``metric_for_best_model`` seen.
        model_dir: folder of the final model (``save_pretrained`` layout).
        history: every evaluation, as logged.
    """

    global_step: int
    epochs_completed: int
    eval_metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    model_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class NonFiniteLossError(RuntimeError):
    """Raised by :func:`train` when a training batch's loss is NaN or infinite (e.g. NaN pixels in a clip).

    Training stops before the optimizer step that would have written the non-finite gradients into the weights, on
    every process; the last checkpoint stays resumable.

    Args:
        step: the optimizer step (1-based, as ``global_step`` in the metrics log) the batch belonged to.
        epoch: its epoch (0-based).
        narration_ids: the ``narration_id`` of every clip of the offending batch (of all processes).
        losses: the non-finite values by name (``loss``, ``verb_loss``, ``noun_loss``).
    """

    def __init__(self, step: int, epoch: int, narration_ids: Sequence[str], losses: Mapping[str, float]):
        self.step, self.epoch, self.narration_ids, self.losses = step, epoch, list(narration_ids), dict(losses)
        values = ", ".join(f"{name}={value}" for name, value in self.losses.items())
        ids = ", ".join(self.narration_ids) if self.narration_ids else "unknown (items without narration_id)"
        super().__init__(
            f"Non-finite training loss ({values}) at step {step} (epoch {epoch}), in the batch with narration_id "
            f"{ids}. Training stopped before this step changed the weights. Check these clips (NaN or inf pixel "
            "values or features) or lower the learning rate, then resume from the last checkpoint."
        )


class EpochSampler(Sampler[int]):
    """A random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Re-creating an epoch's order exactly is what lets a resumed run skip the batches it had already seen.

    Args:
        num_samples: dataset length.
        seed: base seed.
        shuffle: ``False`` gives ``0 .. num_samples - 1`` in order.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def _set_epoch(epoch: int, *objects: Any) -> None:
    for obj in objects:
        if callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)


def _model_inputs(batch: Mapping[str, Any], with_labels: bool = True) -> dict[str, Any]:
    """The batch's model arguments (tensors, and a multi-view batch's ``num_views`` int); no metadata."""
    names = MODEL_INPUT_NAMES if with_labels else MODEL_INPUT_NAMES[:-2]
    return {k: v for k, v in batch.items() if k in names and v is not None}


class _WithNarrationIds:
    """A collate function whose batches (dicts) also carry their items' ``narration_id`` list, so that an error
    can name the clips of a batch; ``_model_inputs`` leaves the key out of the model's inputs."""

    def __init__(self, collate_fn: Callable[[list[Any]], Mapping[str, Any]]):
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> Any:
        batch = self.collate_fn(items)
        has_ids = all(isinstance(item, Mapping) and "narration_id" in item for item in items)
        if isinstance(batch, dict) and "narration_id" not in batch and has_ids:
            batch["narration_id"] = [str(item["narration_id"]) for item in items]
        return batch


def _training_loss(out: Any) -> torch.Tensor:
    """The loss to back-propagate: ``out.loss``, or 0 for a batch without any label (the collator gives none when
    every clip is unlabelled), connected to the outputs so that every process back-propagates (DDP needs it)."""
    if out.loss is not None:
        return out.loss
    values = out.values() if isinstance(out, Mapping) else ()
    outputs = [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad]
    if not outputs:
        raise ValueError("The model returned no `loss` for a training batch: the batches need labels.")
    return sum(v.float().sum() for v in outputs) * 0.0  # (NaN outputs still give NaN: _check_finite sees it)


def _loss_stats(out: Any, loss: torch.Tensor, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """``(2 * len(LOSS_NAMES),)`` on the device: for each loss, its value and whether the batch counts for it (has
    a label that is not ignored; a batch whose labels are all ``-100``, or that has none, has a loss of 0 that must
    not be averaged in). A loss the output lacks is (0, 0); ``loss`` is :func:`_training_loss`."""
    one, zero = torch.ones((), device=device), torch.zeros((), device=device)  # (fills: no host-device copy)
    labelled = {}
    for name in ("verb", "noun"):
        value = batch.get(f"{name}_labels")
        labelled[name] = (value != IGNORE_INDEX).any().float() if isinstance(value, torch.Tensor) else None
    present = [flag for flag in labelled.values() if flag is not None]
    counts = {
        "loss": (torch.stack(present).amax() if present else one) if out.loss is not None else zero,
        "verb_loss": labelled["verb"] if labelled["verb"] is not None else one,
        "noun_loss": labelled["noun"] if labelled["noun"] is not None else one,
    }
    stats = []
    for name in LOSS_NAMES:
        value = loss if name == "loss" else getattr(out, name, None)
        stats += [zero, zero] if value is None else [value.detach().float().reshape(()), counts[name]]
    return torch.stack(stats)


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or getattr(param, "_no_weight_decay", False) or name.endswith(("A_log", ".D"))
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(warmup: int, total: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def find_last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``<output_dir>/checkpoints``, or ``None``."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(step, p) for step, p in _checkpoints(folder) if (p / TRAINER_STATE_NAME).is_file()]
    return found[-1][1] if found else None


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step-N`` folders in ``folder``, by step."""
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))


def _save_model(accelerator: Any, model: torch.nn.Module, processor: Any, folder: Path) -> None:
    """``save_pretrained`` of the unwrapped model and of the processor (if any) into ``folder``."""
    accelerator.unwrap_model(model).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Mapping[str, Any]],
    *,
    batch_size: int = 8,
    task: str = "recognition",
    accelerator: Any | None = None,
    num_workers: int = 0,
    progress_bar: bool = True,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate verb/noun/action metrics on a dataset.

    Batches may carry several temporal views per clip (``num_views`` in the batch, inputs of ``B * V`` rows): the
    model gets ``num_views`` and returns the mean of each clip's views' logits (see
    :meth:`~mambavl.MambaVLForActionRecognition.forward`), as it does under ``transformers.Trainer``.

    Args:
        model: a :class:`~mambavl.MambaVLForActionRecognition` (or anticipation) model.
        dataset: items for ``collate_fn``.
        collate_fn: turns a list of items into model inputs with ``verb_labels`` and ``noun_labels``.
        batch_size: clips per batch (global, when ``accelerator`` runs several processes).
        task: ``"recognition"`` (top-1/5 accuracies, percent) or ``"anticipation"`` (class-mean top-5 recall).
        accelerator: an ``accelerate.Accelerator`` to evaluate on several processes; one is created if ``None``.
        num_workers: DataLoader workers.
        progress_bar: show a tqdm bar.
        return_predictions: also return the gathered ``verb_logits (N, V)``, ``noun_logits (N, N_n)`` and labels.

    Returns:
        The metrics (e.g. ``verb_top1``, ``action_top1``, ... or ``verb_recall5``, ...) and ``num_samples``.
    """
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader

    accelerator = accelerator or Accelerator(cpu=not _has_accelerator())
    # Whole clips per process (never split a batch: its rows may be several views of one clip); the padding
    # that evens out the last batches across processes is dropped again by gather_for_metrics.
    per_process = max(1, batch_size // accelerator.num_processes)
    loader = DataLoader(
        dataset, batch_size=per_process, shuffle=False, collate_fn=drop_skipped(collate_fn), num_workers=num_workers,
        generator=torch.Generator(),  # iterating must not draw from (and so shift) the global RNG
    )  # fmt: skip
    loader = prepare_data_loader(
        loader, accelerator.device, num_processes=accelerator.num_processes,
        process_index=accelerator.process_index, split_batches=False, put_on_device=True,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    accumulator = MetricAccumulator(task=task)
    bar = tqdm(loader, desc="evaluate", disable=not (progress_bar and accelerator.is_local_main_process))
    for batch in bar:
        if _every_segment_skipped(batch, accelerator):
            continue
        out = model(**_model_inputs(batch, with_labels=False))
        verb_logits, noun_logits = out.verb_logits.float(), out.noun_logits.float()  # per clip, views averaged
        gathered = accelerator.gather_for_metrics(
            (verb_logits, noun_logits, batch["verb_labels"], batch["noun_labels"])
        )
        accumulator.update(*gathered)
    model.train(was_training)
    metrics: dict[str, Any] = {**accumulator.compute(), "num_samples": len(accumulator)}
    if return_predictions:
        metrics["predictions"] = accumulator.tensors()
    return metrics


def _save_checkpoint(
    accelerator: Any, model: torch.nn.Module, processor: Any, folder: Path, state: dict[str, Any], limit: int | None
) -> None:
    """Write a checkpoint atomically (temporary folder, then rename) and prune old ones."""
    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        _save_model(accelerator, model, processor, tmp / "model")
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        if limit is not None:
            for _, old in _checkpoints(folder.parent)[:-limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


@locks_output_dir  # one run at a time writes into config.output_dir
def train(
    model: torch.nn.Module,
    train_dataset: Dataset,
    collate_fn: Callable[[list[Any]], Mapping[str, Any]],
    config: TrainingConfig,
    *,
    eval_dataset: Dataset | None = None,
    eval_collate_fn: Callable[[list[Any]], Mapping[str, Any]] | None = None,
    processor: Any | None = None,
    callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
) -> TrainingResult:
    """Train a MambaVL model with Accelerate; see the module docstring for what is saved where.

    Args:
        model: the model to train (any module whose forward takes the collated batch and returns ``.loss``).
        train_dataset: training items; ``set_epoch(epoch)`` is called on it (and on ``collate_fn``) when present.
        collate_fn: list of items -> model inputs with labels (e.g. :class:`~mambavl.data.MambaVLCollator`).
        config: a :class:`TrainingConfig`.
        eval_dataset: evaluated after every epoch when given.
        eval_collate_fn: collator for evaluation (label-free questions); defaults to ``collate_fn``.
        processor: saved next to every model (``save_pretrained``) so checkpoints are self-contained.
        callbacks: called with a dict (``global_step``, ``epoch``, ``lr`` (the learning rate of that step),
            ``loss``, ``verb_loss``, ``noun_loss``: means over all processes' batches since the last log line that
            had labels) after every optimizer step; an exception raised there stops training (the last checkpoint
            stays resumable).

    Returns:
        A :class:`TrainingResult`.

    Raises:
        NonFiniteLossError: a batch's loss was NaN or infinite (raised on every process, before that step).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    from .data.epic_kitchens import check_dataset_labels

    for dataset in (train_dataset, eval_dataset):  # class ids the heads cannot take fail now, not mid-training
        check_dataset_labels(dataset, getattr(model, "config", None))
    cfg = config
    accelerator = Accelerator(
        cpu=cfg.use_cpu if cfg.use_cpu is not None else not _has_accelerator(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # (the `split_batches=` argument of Accelerator is deprecated and ignored: it must go through here)
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        step_scheduler_with_optimizer=False,
    )
    if cfg.mixed_precision != "no" and not accelerator.native_amp and accelerator.is_main_process:
        logger.warning("mixed_precision=%r is not available on %s: training in float32.", cfg.mixed_precision,
                       accelerator.device)  # fmt: skip
    if cfg.batch_size % accelerator.num_processes:
        raise ValueError(
            f"`batch_size` ({cfg.batch_size}) is the global batch and must be divisible by the number of processes "
            f"({accelerator.num_processes})."
        )
    output_dir = Path(cfg.output_dir)
    resume_dir = _resolve_resume(cfg, output_dir)
    if accelerator.is_main_process:
        if resume_dir is None and cfg.resume_from_checkpoint is not None:  # "auto" in a folder without checkpoints
            logger.warning("no checkpoint to resume from in %s: starting a fresh run there.", output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    sampler = EpochSampler(len(train_dataset), seed=cfg.seed)
    train_loader = DataLoader(
        train_dataset, batch_size=cfg.batch_size, sampler=sampler,
        collate_fn=drop_skipped(_WithNarrationIds(collate_fn)),
        num_workers=cfg.num_workers, drop_last=True,
        # Its own generator: starting an epoch (or a resumed one) must not consume the global RNG, which drives
        # dropout and is restored exactly on resumption.
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    if len(train_loader) == 0:
        raise ValueError(
            f"The training set ({len(train_dataset)} items) is smaller than one batch ({cfg.batch_size})."
        )
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    lr_factor = _lr_lambda(int(cfg.warmup_ratio * total_steps), total_steps, cfg.lr_scheduler)
    optimizer = torch.optim.AdamW(_parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    state: dict[str, Any] = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "best_metric": None, "history": []}
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state = json.loads((resume_dir / TRAINER_STATE_NAME).read_text())
        # The schedule is planned for this run's limit: the loaded optimizer holds the learning rate the old plan
        # gave the next step (0 at the end of a cosine planned for fewer steps); take the new plan's instead.
        _replan_learning_rate(optimizer, scheduler, lr_factor)
        logger.info("Resumed from %s at step %d (epoch %d).", resume_dir, state["global_step"], state["epoch"])
        if accelerator.is_main_process and (
            state["global_step"] >= total_steps or (cfg.max_steps is None and state["epoch"] >= cfg.num_epochs)
        ):
            limit = (f"{cfg.max_steps} steps (max_steps, CLI --max-steps)" if cfg.max_steps else
                     f"{cfg.num_epochs} epochs (num_epochs, CLI --epochs)")  # fmt: skip
            logger.warning("nothing to train: %s is at or past this run's limit of %s; the model saved is that "
                           "checkpoint's. Raise the limit to train further.", resume_dir.name, limit)  # fmt: skip
    log_path = output_dir / METRICS_LOG_NAME
    if accelerator.is_main_process:
        _append_jsonl(log_path, {"event": "start", "time": time.time(), "config": _jsonable(asdict(cfg)),
                                 "num_processes": accelerator.num_processes, "device": str(accelerator.device),
                                 "resumed_from": str(resume_dir) if resume_dir else None})  # fmt: skip

    def checkpoint() -> None:
        folder = output_dir / "checkpoints" / f"step-{state['global_step']}"
        _save_checkpoint(accelerator, model, processor, folder, state, cfg.save_total_limit)

    bar = tqdm(
        total=total_steps, initial=state["global_step"], desc="train",
        disable=not (cfg.progress_bar and accelerator.is_local_main_process),
    )  # fmt: skip
    eval_metrics: dict[str, float] = state["history"][-1]["metrics"] if state["history"] else {}
    running: dict[str, list[float]] = {}  # name -> [sum, batches counted] since the last log line
    pending: list[torch.Tensor] = []  # this optimizer step's loss statistics (_loss_stats), still on the device
    pending_ids: list[list[str]] = []  # and the narration ids of its batches
    model.train()
    # Where the run is in its epoch, in batches drawn from the loader: optimizer steps undercount it when a batch
    # whose every segment was skipped as unreadable gives no step (checkpoints before this key: steps x accumulation).
    state.setdefault("batch_in_epoch", state["step_in_epoch"] * cfg.gradient_accumulation_steps)
    while state["global_step"] < total_steps and (cfg.max_steps is not None or state["epoch"] < cfg.num_epochs):
        epoch, steps_before, from_start = state["epoch"], state["global_step"], state["batch_in_epoch"] == 0
        # The prepared loader re-seeds its sampler with its own iteration count when iterated, so the epoch goes
        # through it (a resumed run's loader, and the loader that skips the batches already seen, start at 0).
        _set_epoch(epoch, train_loader, train_dataset, collate_fn)
        loader: Iterable[Any] = train_loader
        if state["batch_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batch_in_epoch"])
        for batch in loader:
            state["batch_in_epoch"] += 1
            if _every_segment_skipped(batch, accelerator):
                continue
            with accelerator.accumulate(model):
                out = model(**_model_inputs(batch))
                loss = _training_loss(out)
                accelerator.backward(loss)
                pending.append(_loss_stats(out, loss, batch, accelerator.device))
                pending_ids.append(list(batch.get("narration_id", ())))
                if accelerator.sync_gradients:
                    # One device-to-host copy (and, on several processes, one gather) per optimizer step; a
                    # non-finite loss stops every process before the optimizer step spreads it into the weights.
                    stats = _gather_stats(accelerator, pending)
                    _check_finite(accelerator, stats, pending_ids, state["global_step"] + 1, epoch)
                    if cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]  # the learning rate of this step
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            for row in stats:
                for i, name in enumerate(LOSS_NAMES):
                    if row[2 * i + 1]:  # batches whose labels are all ignored have no loss to average in
                        total = running.setdefault(name, [0.0, 0])
                        total[0] += row[2 * i]
                        total[1] += 1
            pending, pending_ids = [], []
            scheduler.step()
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            bar.update(1)
            record = {"global_step": state["global_step"], "epoch": epoch, "lr": lr}
            record.update({name: total / count for name, (total, count) in running.items()})
            if "loss" in record:
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if state["global_step"] % cfg.logging_steps == 0 or state["global_step"] == total_steps:
                if accelerator.is_main_process:
                    _append_jsonl(log_path, {"event": "train", **record})
                running = {}
            if cfg.save_steps and state["global_step"] % cfg.save_steps == 0:
                checkpoint()
            for callback in callbacks:
                callback(record)
            if state["global_step"] >= total_steps:
                break
        # The step limit may end the run mid-epoch: that epoch is not complete, and a resumed run (with a higher
        # limit) goes on with its remaining batches.
        epoch_complete = state["batch_in_epoch"] >= len(train_loader)
        if epoch_complete:
            state["epoch"] += 1
            state["step_in_epoch"] = state["batch_in_epoch"] = 0
        if eval_dataset is not None and cfg.eval_each_epoch:
            eval_metrics = evaluate(
                model, eval_dataset, eval_collate_fn or collate_fn, batch_size=cfg.eval_batch_size or cfg.batch_size,
                task=cfg.task, accelerator=accelerator, num_workers=cfg.num_workers, progress_bar=cfg.progress_bar,
            )  # fmt: skip
            score = eval_metrics.get(cfg.metric_for_best_model)
            if score is not None and (state["best_metric"] is None or score > state["best_metric"]):
                state["best_metric"] = score
            state["history"].append({"epoch": epoch, "global_step": state["global_step"], "metrics": eval_metrics,
                                     "epoch_complete": epoch_complete})  # fmt: skip
            if accelerator.is_main_process:
                _append_jsonl(log_path, {"event": "eval", "epoch": epoch, "global_step": state["global_step"],
                                         "epoch_complete": epoch_complete, **eval_metrics})  # fmt: skip
                logger.info("epoch %d: %s", epoch, _format_metrics(eval_metrics))
        if (cfg.save_each_epoch and epoch_complete) or not epoch_complete:  # the limit's step is always resumable
            checkpoint()
        if epoch_complete and from_start and state["global_step"] == steps_before and cfg.max_steps is not None:
            raise ValueError(  # the data, not a bug: max_steps would never be reached, every epoch being the same
                f"Epoch {epoch} gave no training step: every segment of every batch was skipped as unreadable. "
                "Check the videos (EK100SegmentDataset(check_videos='decode') finds the bad ones up front)."
            )
    bar.close()
    _log_skipped(accelerator, train=train_dataset, evaluation=eval_dataset)

    model_dir = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_model(accelerator, model, processor, model_dir)
    result = TrainingResult(
        global_step=state["global_step"], epochs_completed=state["epoch"], eval_metrics=eval_metrics,
        best_metric=state["best_metric"], model_dir=model_dir, history=state["history"],
    )  # fmt: skip
    _finish(accelerator)
    return result


def _every_segment_skipped(batch: Any, accelerator: Any) -> bool:
    """Whether a batch is ``None``: every segment of it was unreadable and skipped (see ``drop_skipped``)."""
    if batch is not None:
        return False
    if accelerator.num_processes > 1:  # the processes' collective operations would no longer match
        raise RuntimeError(
            "Every segment of a batch was unreadable and skipped (see the warnings above); with several processes a "
            "whole batch cannot be passed over. Remove the unreadable files, or use a larger batch."
        )
    return True


def _log_skipped(accelerator: Any, **datasets: Any) -> None:
    """Log how many segments of each dataset were skipped as unreadable (summed over processes)."""
    for name, dataset in datasets.items():
        if callable(getattr(dataset, "skipped_mask", None)):
            mask = accelerator.reduce(dataset.skipped_mask().to(accelerator.device, torch.int32), reduction="sum")
            count = int((mask > 0).sum())
            if count and accelerator.is_main_process:
                logger.warning("%d segments of the %s set were skipped as unreadable.", count, name)


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or (xpu is not None and xpu.is_available())


def _resolve_resume(cfg: TrainingConfig, output_dir: Path) -> Path | None:
    resume = cfg.resume_from_checkpoint
    if resume is None:
        if find_last_checkpoint(output_dir) is not None:
            raise ValueError(
                f"{output_dir} already holds checkpoints: pass resume_from_checkpoint='auto' (CLI: --resume) to "
                "continue that run, or choose another output directory."
            )
        return None
    if str(resume) == "auto":
        return find_last_checkpoint(output_dir)
    path = Path(resume)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise ValueError(f"`resume_from_checkpoint`={resume!s} is not a checkpoint folder (no {TRAINER_STATE_NAME}).")
    return path


def _gather_stats(accelerator: Any, pending: list[torch.Tensor]) -> list[list[float]]:
    """The loss statistics of this optimizer step's batches on every process, as rows (process-major)."""
    stats = torch.stack(pending)
    if accelerator.num_processes > 1:
        stats = accelerator.gather(stats)
    return stats.float().tolist()


def _check_finite(
    accelerator: Any, stats: list[list[float]], pending_ids: list[list[str]], step: int, epoch: int
) -> None:
    """Raise :class:`NonFiniteLossError` on every process when a loss of this step is NaN or infinite."""
    bad = [r for r, row in enumerate(stats) if not all(math.isfinite(v) for v in row[::2])]
    if not bad:
        return
    from accelerate.utils import gather_object

    # stats rows are process-major; a global batch is made of the same micro-batch on every process
    all_ids = gather_object(pending_ids) if accelerator.num_processes > 1 else pending_ids
    per_process = len(pending_ids)
    micro = sorted({r % per_process for r in bad})
    ids = [i for m in micro for p in range(len(stats) // per_process) for i in all_ids[p * per_process + m]]
    row = stats[bad[0]]
    losses = {name: row[2 * i] for i, name in enumerate(LOSS_NAMES) if not math.isfinite(row[2 * i])}
    _finish(accelerator)
    raise NonFiniteLossError(step, epoch, ids, losses)


def _replan_learning_rate(optimizer: Any, scheduler: Any, factor: Callable[[int], float]) -> None:
    """After loading a checkpoint, set the learning rate of the next step from this run's schedule."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    lrs = [base * factor(inner.last_epoch) for base in inner.base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    inner._last_lr = lrs


def _finish(accelerator: Any) -> None:
    """End a run cleanly; without tearing the process group down, gloo sometimes aborts at exit.

    The pause after the barrier matters too: gloo's worker thread releases a finished collective (and the Python
    tensors it holds, which needs the GIL) after the caller has seen it complete. If the model's DDP reducer, the last
    owner of the process group, is freed before that (say while an exception unwinds), the group's destructor joins the
    worker thread while holding the GIL, and both wait forever (seen on a 2-process run that stopped on a NaN loss).
    """
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(0.2)  # releases the GIL: the worker thread drops the barrier's work
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
