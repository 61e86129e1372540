"""The training loop shared by train_kd.py and finetune_postprune.py.

One epoch = the training windows in length-grouped, shuffled batches; after each epoch the
student is scored on the validation sentences (seqeval strict IOB2) and the best one is
saved into the run folder, beside `training_log.jsonl`, `training_summary.json` and a model
card (`README.md`). The checkpoint (model + optimizer, scheduler, scaler, RNG states and
counters) lives in a sibling folder, `<run>.checkpoint/`, so that the model folder holds only
what is deployed or uploaded; `--resume` continues from it exactly where the run stopped.

A stage script builds one `Stage` (the models and the settings of this run) and calls
`run_stage`; `train` reads as the recipe: restore or start, then `train_one_epoch` and
`end_of_epoch` until the epochs run out, early stopping or a signal.
"""
from __future__ import annotations

import importlib.util
import json
import math
import pickle
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Config, LossWeights, TrainingConfig, config_to_dict, stage_config
from data_loader import (EncodedWindow, Example, LengthGroupedBatchSampler, collate_windows, encode_sentences, join_batches,
                         read_examples)
from decoding import predict_windows, seqeval_scores, word_level_emissions
from losses import KDMapping, TeacherTargets, combined_loss, partial_crf_nll, pseudo_label_targets
from model_card import CARD_NAME, card_for_model, pictures_in, stage_data
from models import LabelProjection, NERModel, count_parameters, heads_per_layer, load_model, save_model
from plots import CURVES_FILE, curves_data, draw_curves, read_log
from precision import autocast_for, resolve_precision
from utils import (PipelineError, Runtime, claim_output, describe_changes, find_published, package_versions,
                   prepare_output_dir, publishing, write_json, write_text)
from unlabeled import UnlabeledScan, UnlabeledStream, check_unlabeled_files
from vocabulary import teacher_to_student_ids

CHECKPOINT_SUFFIX = ".checkpoint"  # artifacts/student_10L -> artifacts/student_10L.checkpoint
LEGACY_CHECKPOINT_DIR = "checkpoint"  # inside the run folder, as runs before the move wrote it
TRAINER_STATE = "trainer_state.pt"
TENSORBOARD_DIR = "tensorboard"
LOG_FILE = "training_log.jsonl"
SUMMARY_FILE = "training_summary.json"


# ---------------------------------------------------------------------------
# What a run works with

@dataclass(frozen=True)
class Stage:
    """One training run: its models, the settings it trains with, where it runs and writes.

    Built once by `Stage.create` from the validated config; the loop reads every setting from
    `training` (stage 3's epochs and learning rate already applied) and nowhere else.
    """
    name: str                        # "kd" (stage 1) or "finetune" (stage 3)
    student: NERModel
    teacher: NERModel | None
    tokenizer: object                # the student's: saved with it, encodes the val and test sets
    projection: LabelProjection | None
    training: TrainingConfig
    weights: LossWeights             # terms that cannot apply here (no CRF, no teacher) are 0
    temperature: float
    precision: str                   # fp32, bf16 or fp16, resolved for the device
    max_length: int                  # subwords per training window
    runtime: Runtime
    run_dir: Path
    config_record: dict              # the whole config as loaded, saved with checkpoints and summary
    command: list[str]
    # A student with a trimmed vocabulary: the training windows are encoded once with the
    # teacher's tokenizer, so that both see the same subwords, and the student reads them
    # through this lookup (teacher id -> student id). None when they share one vocabulary.
    train_tokenizer: object = None
    student_ids: torch.Tensor | None = None
    unlabeled: "UnlabeledText | None" = None   # data.unlabeled_files, when a teacher term uses them

    @classmethod
    def create(cls, name: str, config: Config, student: NERModel, teacher: NERModel | None, tokenizer,
               projection: LabelProjection | None, runtime: Runtime, run_dir: Path, command: list[str],
               teacher_tokenizer=None, unlabeled_scan: UnlabeledScan | None = None) -> "Stage":
        settings = stage_config(config, name)
        weights = settings.distillation.weights
        if student.crf is None:
            weights = replace(weights, crf=0.0)
        if teacher is None:
            weights = replace(weights, kd=0.0, hidden=0.0)
        train_tokenizer, student_ids = tokenizer, None
        if teacher is not None and teacher_tokenizer is not None and \
                teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            train_tokenizer, student_ids = teacher_tokenizer, teacher_to_student_ids(teacher_tokenizer, tokenizer)
        max_length = min(settings.data.max_seq_length, student.position_limit)
        # the saved model records its window, and decoding uses it: inference scores what validation measured
        student.info = replace(student.info, window=max_length)
        unlabeled = UnlabeledText.create(unlabeled_scan, settings.distillation, weights, teacher, student,
                                         train_tokenizer, max_length, runtime)
        return cls(name, student, teacher, tokenizer, projection, settings.training, weights,
                   settings.distillation.temperature,
                   resolve_precision(settings.training.mixed_precision, runtime.device), max_length, runtime, run_dir,
                   config_to_dict(config), command, train_tokenizer, student_ids, unlabeled)

    @property
    def say(self):
        """print on the main process, nothing on the others."""
        return print if self.runtime.is_main else (lambda *a, **k: None)


@dataclass(frozen=True)
class UnlabeledText:
    """Unlabelled notes in a run: their stream, and how their windows train the student.

    Each labelled batch of n windows gets round(n * per_labeled) unlabelled windows, in the same
    forward pass. They get only the teacher terms (KD, hidden; and with pseudo-labels, a CRF term on
    the teacher's confident tags), scaled by `weight`.
    """
    stream: UnlabeledStream
    scan: UnlabeledScan
    weight: float
    per_labeled: float
    pseudo_labels: bool
    threshold: float

    @classmethod
    def create(cls, scan: UnlabeledScan | None, distillation, weights: LossWeights, teacher, student,
               tokenizer, max_length: int, runtime: Runtime) -> "UnlabeledText | None":
        """None when there are no unlabelled files, or when nothing would use them (then a warning)."""
        if scan is None:
            return None
        pseudo = distillation.pseudo_labels and student.crf is not None
        unused = ("the stage has no teacher" if teacher is None else
                  "kd and hidden are 0 and pseudo_labels is off" if weights.kd == 0 and weights.hidden == 0
                  and not pseudo else "distillation.unlabeled_weight is 0" if distillation.unlabeled_weight == 0
                  else None)
        if unused:
            if runtime.is_main:
                print(f"warning: data.unlabeled_files is set but not used: {unused}.")
            return None
        stream = UnlabeledStream(list(scan.files), tokenizer, max_length, runtime.rank, runtime.world_size)
        return cls(stream, scan, distillation.unlabeled_weight, distillation.unlabeled_per_labeled, pseudo,
                   distillation.pseudo_label_threshold)

    def windows_for(self, labelled: int) -> int:
        return max(1, round(labelled * self.per_labeled))

    def describe(self) -> str:
        return (f"{self.scan.describe()}; {self.per_labeled:g} unlabelled window(s) per labelled one, weight "
                f"{self.weight:g}, pseudo-labels {'on (threshold %g)' % self.threshold if self.pseudo_labels else 'off'}.")

    def record(self) -> dict:
        return {"files": list(self.scan.files), "notes": self.scan.notes, "blank_lines": self.scan.blank_lines,
                "per_labeled": self.per_labeled, "weight": self.weight, "pseudo_labels": self.pseudo_labels,
                "pseudo_label_threshold": self.threshold}


@dataclass
class EvalSet:
    """Validation or test sentences, encoded once."""
    sentences: list[list[str]]
    tags: list[list[str]]
    windows: list[EncodedWindow]


def make_eval_set(tokenizer, examples: list[Example], max_length: int) -> EvalSet:
    sentences = [list(e.tokens) for e in examples]
    windows = encode_sentences(tokenizer, sentences, max_length, overlap=max_length // 4)
    return EvalSet(sentences, [list(e.tags) for e in examples], windows)


@dataclass
class StageData:
    """The examples a training stage reads (checked before any slow step)."""
    train: list[Example]
    val: list[Example]
    test: list[Example] | None
    unlabeled: UnlabeledScan | None = None


def read_stage_data(data, label2id: dict[str, int]) -> StageData:
    """The train, val and test files of the config's `data` section, and a check of its unlabelled files."""
    return StageData(read_examples(data.train_file, label2id), read_examples(data.val_file, label2id),
                     read_examples(data.test_file, label2id) if data.test_file else None,
                     check_unlabeled_files(data.unlabeled_files) if data.unlabeled_files else None)


@dataclass
class EncodedData:
    """A stage's data as the loop takes it: training windows, val and test sets."""
    train: list[EncodedWindow]
    val: EvalSet
    test: EvalSet | None


def evaluate(model: NERModel, eval_set: EvalSet, pad_id: int, batch_size: int,
             device, autocast=nullcontext) -> dict:
    """seqeval strict IOB2 precision, recall and F1, overall and per type."""
    try:
        predictions = predict_windows(model, eval_set.windows, [len(s) for s in eval_set.sentences],
                                      pad_id, batch_size, device, autocast)
    except torch.cuda.OutOfMemoryError as error:
        raise PipelineError(f"CUDA out of memory while evaluating with batches of {batch_size} windows. "
                            "Lower training.eval_batch_size.") from error
    return seqeval_scores(eval_set.tags, [p.tags for p in predictions])


class StopFlag:
    """Set by SIGTERM/SIGINT (a stopped pod, Ctrl-C) while in its `with` block; the loop
    then checkpoints and exits. The previous handlers come back on exit."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


# ---------------------------------------------------------------------------
# State that survives a restart, and the parts that move it

@dataclass
class LoopState:
    """Counters saved in every checkpoint."""
    epoch: int = 0               # current epoch (0-based)
    batches_done: int = 0        # micro-batches consumed in the current epoch
    global_step: int = 0         # optimizer steps
    best_f1: float = -1.0
    best_epoch: int = -1
    best_scores: dict = field(default_factory=dict)
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    elapsed: float = 0.0         # seconds spent before this process
    log_sums: dict = field(default_factory=dict)  # loss sums since the last log line
    log_batches: int = 0         # micro-batches in those sums
    unlabeled_positions: list = field(default_factory=list)  # the unlabelled stream's position, per rank

    @classmethod
    def from_checkpoint(cls, record: dict) -> "LoopState":
        record = dict(record, log_sums=dict(record.get("log_sums", {})))
        # checkpoints written before log_batches existed kept the count among the sums
        record["log_batches"] = int(record["log_sums"].pop("_batches", record.get("log_batches", 0)))
        return cls(**record)


class RunningLoss:
    """Loss terms summed on the device since the last log line: read back once per log line,
    so the GPU runs ahead of Python in between."""

    def __init__(self, sums: dict[str, float], batches: int):
        self.sums: dict[str, torch.Tensor | float] = dict(sums)
        self.batches = batches
        self.windows, self.clock = 0, time.time()

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], windows: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss.detach()
        self.batches += 1
        self.windows += windows

    def read_and_reset(self, world_size: int) -> dict[str, float]:
        """Mean of each term over the batches summed, and windows per second (all ranks)."""
        record = {name: float(value) / self.batches for name, value in self.sums.items()}
        record["samples_per_s"] = self.windows * world_size / max(time.time() - self.clock, 1e-9)
        self.sums, self.batches, self.windows, self.clock = {}, 0, 0, time.time()
        return record

    def saved(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.sums.items()}


class Optimization:
    """AdamW, its linear warm-up/decay schedule and the fp16 loss scaler, stepped together.

    No weight decay on biases and LayerNorm; the CRF at its own learning rate.
    """

    def __init__(self, student: NERModel, training: TrainingConfig, total_steps: int, precision: str, device):
        decay, no_decay, crf = [], [], []
        for name, parameter in student.named_parameters():
            (crf if name.startswith("crf.") else no_decay if parameter.ndim == 1 else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": training.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if crf:
            groups.append({"params": crf, "weight_decay": 0.0, "lr": training.crf_learning_rate})
        self.optimizer = torch.optim.AdamW(groups, lr=training.learning_rate)
        warmup = int(total_steps * training.warmup_ratio)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.parameters, self.max_grad_norm = list(student.parameters()), training.max_grad_norm

    def backward(self, loss: torch.Tensor, accumulation_steps: int) -> None:
        self.scaler.scale(loss / accumulation_steps).backward()

    def step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class Loop:
    """The moving parts of a run, built once: the model being stepped, batches, optimizer."""
    model: torch.nn.Module           # the student, or its DDP wrapper
    sampler: LengthGroupedBatchSampler
    loader: DataLoader
    batches_per_epoch: int
    optim: Optimization
    mapping: KDMapping | None
    student_ids: torch.Tensor | None  # Stage.student_ids, on the device
    autocast: object                 # a factory of autocast contexts
    stop_group: object               # the gloo group that agrees on stopping (DDP)
    pending_rng: dict | None = None  # RNG states of a resumed run, restored as its first batch is drawn
    report: "TensorBoardReport | None" = None  # training.report_to: tensorboard, main process only

    @classmethod
    def create(cls, stage: Stage, windows: list[EncodedWindow]) -> "Loop":
        runtime, training, device = stage.runtime, stage.training, stage.runtime.device
        stage.student.to(device).train()
        if stage.teacher is not None:
            stage.teacher.to(device).eval()
        mapping = None
        if stage.teacher is not None and stage.weights.kd > 0:
            mapping = KDMapping.from_projection(stage.projection).to(device)
        model = stage.student
        if runtime.distributed:
            unused = stage.student.crf is not None and stage.weights.crf == 0
            model = DistributedDataParallel(stage.student, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=unused)
        stop_group = torch.distributed.new_group(backend="gloo") if runtime.distributed else None
        sampler = LengthGroupedBatchSampler([len(w.input_ids) for w in windows], training.batch_size,
                                            training.seed, num_replicas=runtime.world_size, rank=runtime.rank)
        # a private generator: creating the loader must not consume the global RNG (resume equivalence)
        loader = DataLoader(windows, batch_sampler=sampler, num_workers=training.num_workers,
                            collate_fn=partial(collate_windows, pad_id=stage.train_tokenizer.pad_token_id),
                            generator=torch.Generator().manual_seed(training.seed),
                            pin_memory=device.type == "cuda")
        batches_per_epoch = len(sampler)
        total_steps = math.ceil(batches_per_epoch / training.grad_accumulation_steps) * training.max_epochs
        optim = Optimization(stage.student, training, total_steps, stage.precision, device)
        student_ids = None if stage.student_ids is None else stage.student_ids.to(device)
        return cls(model, sampler, loader, batches_per_epoch, optim, mapping, student_ids,
                   autocast_for(stage.precision, device), stop_group)


# ---------------------------------------------------------------------------
# The loop

def train(stage: Stage, data: EncodedData, stop: StopFlag, resume: bool = False) -> TrainResult:
    """Train the student (distilling from the teacher, if any) and keep the best model in the run folder."""
    started = time.time()
    loop = Loop.create(stage, data.train)
    state = restore(stage, loop) if resume else start(stage, loop, data.val)
    if stage.runtime.is_main and stage.training.report_to == "tensorboard":
        loop.report = TensorBoardReport(stage.run_dir, state.global_step)
    running = RunningLoss(state.log_sums, state.log_batches)
    stopped_by, early_stopped = None, 0 < stage.training.early_stopping_patience <= state.bad_epochs
    try:
        while state.epoch < stage.training.max_epochs and not early_stopped:
            stopped_by = train_one_epoch(stage, loop, state, running, stop)
            if stopped_by:
                break
            early_stopped = end_of_epoch(stage, loop, state, running, data.val)
    finally:
        if loop.report is not None:
            loop.report.close()
    state.elapsed += time.time() - started
    if stage.runtime.distributed:
        torch.distributed.barrier()  # rank 0 has finished writing the best model
    test_scores = None
    if stage.runtime.is_main and stopped_by is None and data.test is not None and state.best_epoch > 0:
        best, _ = load_model(stage.run_dir, stage.runtime.device)
        test_scores = evaluate(best, data.test, stage.tokenizer.pad_token_id, stage.training.eval_batch_size,
                               stage.runtime.device, loop.autocast)
    return TrainResult(state, stopped_by, early_stopped, test_scores, state.elapsed)


def start(stage: Stage, loop: Loop, val_set: EvalSet) -> LoopState:
    """A fresh run: an empty log, and the untrained student's val scores as the starting point."""
    if stage.runtime.is_main:
        (stage.run_dir / LOG_FILE).write_text("")
    state = LoopState()
    initial = evaluate(stage.student, val_set, stage.tokenizer.pad_token_id, stage.training.eval_batch_size,
                       stage.runtime.device, loop.autocast)
    state.history.append({"epoch": 0, "step": 0, "val": initial})
    return state


def restore(stage: Stage, loop: Loop) -> LoopState:
    """Continue from the run's last checkpoint: optimizer, counters, RNG states, log lines up to it."""
    path = find_checkpoint(stage.run_dir) / TRAINER_STATE
    try:  # tensors and plain data only: a checkpoint copied from elsewhere must never run code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise PipelineError(f"--resume: {path} cannot be read as a training checkpoint (it is damaged, or holds "
                            "objects other than tensors and plain data, which are never loaded). Start the "
                            "run again without --resume.") from error
    loop.optim.load_state_dict(checkpoint)
    state, loop.pending_rng = LoopState.from_checkpoint(checkpoint["state"]), checkpoint["rng"]
    if stage.unlabeled is not None:
        _restore_unlabeled(stage, state.unlabeled_positions)
    changes = describe_changes(checkpoint.get("config", {}), stage.config_record)
    moved = describe_changes(checkpoint["machine"], machine_record(stage.runtime)) if "machine" in checkpoint else []
    stage.say(f"Resuming from epoch {state.epoch + 1}, step {state.global_step} "
              f"(best val F1 so far {max(state.best_f1, 0):.4f}).")
    if changes:
        stage.say("The config differs from the interrupted run's (results will not match an "
                  "uninterrupted run exactly):\n  " + "\n  ".join(changes))
    if moved:
        stage.say("This machine differs from the interrupted run's (the run continues correctly, but its "
                  "numbers will drift from an uninterrupted run's):\n  " + "\n  ".join(moved))
    log_path = stage.run_dir / LOG_FILE
    if stage.runtime.is_main and log_path.exists():  # drop lines logged after the checkpoint
        records, _ = read_log(log_path)  # a line cut by a kill is dropped too
        with publishing(log_path) as staging:
            staging.write_text("".join(json.dumps(r) + "\n" for r in records if r.get("step", 0) <= state.global_step))
    return state


def _restore_unlabeled(stage: Stage, positions: list) -> None:
    """Put this rank's unlabelled stream where the checkpoint left it."""
    runtime = stage.runtime
    if len(positions) == runtime.world_size:
        stage.unlabeled.stream.restore(positions[runtime.rank])
    elif positions:
        raise PipelineError(f"--resume: the checkpoint was written by {len(positions)} process(es) reading the "
                            f"unlabelled notes, this run has {runtime.world_size}; resume with the same number of "
                            "processes.")
    else:
        stage.say("The checkpoint has no position in the unlabelled notes (the run started without them): "
                  "they are read from the start.")


def train_one_epoch(stage: Stage, loop: Loop, state: LoopState, running: RunningLoss, stop: StopFlag) -> str | None:
    """The epoch's remaining batches; returns what stopped it early (a signal name), else None."""
    training = stage.training
    loop.sampler.set_epoch(state.epoch, skip_batches=state.batches_done)
    if loop.pending_rng is not None:
        _restore_rng(loop.pending_rng)
        loop.pending_rng = None
    progress = tqdm(loop.loader, total=loop.batches_per_epoch, initial=state.batches_done,
                    disable=not stage.runtime.is_main, desc=f"epoch {state.epoch + 1}/{training.max_epochs}",
                    dynamic_ncols=True)
    with progress:
        for batch in progress:
            batch = batch.to(stage.runtime.device)
            boundary = ((state.batches_done + 1) % training.grad_accumulation_steps == 0
                        or state.batches_done + 1 == loop.batches_per_epoch)
            loss, terms = _forward_backward(stage, loop, state, batch, boundary)
            running.add(loss, terms, batch.input_ids.size(0))
            state.batches_done += 1
            if not boundary:
                continue
            state.global_step += 1
            if state.global_step % training.log_every_steps == 0:
                record = _write_log_line(stage, state, running, loop.optim.learning_rate, loop.report)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if _sync_stop(stop.requested, stage.runtime, loop.stop_group):
                save_checkpoint(stage, loop, state, running)
                return stop.signal_name or "a stop on another rank"
            if training.checkpoint_every_steps and state.global_step % training.checkpoint_every_steps == 0:
                save_checkpoint(stage, loop, state, running)
    return None


def end_of_epoch(stage: Stage, loop: Loop, state: LoopState, running: RunningLoss, val_set: EvalSet) -> bool:
    """Score the epoch on val, keep the model if it is the best so far, checkpoint; True = stop early."""
    scores = evaluate(stage.student, val_set, stage.tokenizer.pad_token_id, stage.training.eval_batch_size,
                      stage.runtime.device, loop.autocast)
    overall = scores["overall"]
    improved = overall["f1"] > state.best_f1
    state.history.append({"epoch": state.epoch + 1, "step": state.global_step, "val": scores})
    if stage.runtime.is_main:
        record = val_record(state.epoch + 1, state.global_step, scores)
        _append_log(stage.run_dir, record)
        if loop.report is not None:
            loop.report.val(record)
    if improved:
        state.best_f1, state.best_epoch, state.best_scores, state.bad_epochs = (
            overall["f1"], state.epoch + 1, scores, 0)
        if stage.runtime.is_main:
            save_model(stage.student, stage.tokenizer, stage.run_dir)
    else:
        state.bad_epochs += 1
    stage.say(f"epoch {state.epoch + 1}: val P {overall['precision']:.4f} R {overall['recall']:.4f} "
              f"F1 {overall['f1']:.4f}"
              + ("  (best, saved)" if improved else f"  (best {state.best_f1:.4f} at epoch {state.best_epoch})"))
    state.epoch, state.batches_done = state.epoch + 1, 0
    patience = stage.training.early_stopping_patience
    early_stopped = 0 < patience <= state.bad_epochs and state.epoch < stage.training.max_epochs
    save_checkpoint(stage, loop, state, running)
    if early_stopped:
        stage.say(f"Early stopping: no val F1 improvement for {state.bad_epochs} epochs.")
    return early_stopped


def step_loss(model, student: NERModel, teacher: NERModel | None, batch, weights: LossWeights, temperature: float,
              mapping: KDMapping | None, autocast=nullcontext, student_ids: torch.Tensor | None = None,
              unlabeled: "UnlabeledBatch | None" = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The forward half of a training step: teacher targets, student outputs, weighted losses.

    `model` is the student or its DDP wrapper. The batch holds the teacher's ids; `student_ids`
    turns them into the student's for a student with a trimmed vocabulary. With `unlabeled`, its
    windows join the batch in the same forward pass and add their teacher terms (named
    `<term>_unlabeled` in the log). Nothing here waits for the device (no data-dependent shapes,
    no .item()) unless pseudo-labels are on, so the GPU runs ahead of Python between log steps.
    """
    labelled = batch.input_ids.size(0)
    if unlabeled is not None:
        batch = join_batches(batch, unlabeled.batch, unlabeled.pad_id, unlabeled.fill_label)
    targets = _teacher_targets(teacher, batch, weights, student.info.teacher_layers, autocast,
                               emissions=unlabeled is not None and unlabeled.pseudo is not None)
    input_ids = batch.input_ids if student_ids is None else student_ids[batch.input_ids]
    with autocast():
        out = model(input_ids, batch.attention_mask, output_hidden_states=weights.hidden > 0)
        emissions = word_level_emissions(out.logits, batch.word_starts)
        hidden = list(out.hidden_states[1:]) if weights.hidden > 0 else None
        part = lambda rows: (emissions[rows], None if hidden is None else [h[rows] for h in hidden],
                             _rows_of(targets, rows), batch.word_labels[rows], batch.word_mask[rows],
                             batch.attention_mask[rows])
        loss, terms = combined_loss(*part(slice(0, labelled)), student.crf, weights, mapping, temperature)
        if unlabeled is None:
            return loss, terms
        rows = slice(labelled, None)
        extra, extra_terms = combined_loss(*part(rows), None, replace(weights, ce=0.0, crf=0.0), mapping, temperature)
        if unlabeled.pseudo is not None:
            tags, known = pseudo_label_targets(targets.emissions[rows], batch.word_mask[rows], *unlabeled.pseudo)
            extra_terms["pseudo_crf"] = partial_crf_nll(student.crf, emissions[rows], tags, known, batch.word_mask[rows])
            extra = extra + weights.crf * extra_terms["pseudo_crf"]
        terms.update({f"{name}_unlabeled": value for name, value in extra_terms.items()})
        return loss + unlabeled.weight * extra, terms


@dataclass(frozen=True)
class UnlabeledBatch:
    """Unlabelled windows for one step, and what `step_loss` needs to use them."""
    batch: object                      # a data_loader.Batch without labels
    weight: float
    pad_id: int
    fill_label: int                    # the student's O, as the label of unlabelled words (KD masks by it)
    pseudo: tuple | None               # (teacher labels, student label2id, type map, threshold), or None


def _rows_of(targets: TeacherTargets | None, rows: slice) -> TeacherTargets | None:
    if targets is None:
        return None
    return TeacherTargets(None if targets.emissions is None else targets.emissions[rows],
                          None if targets.hidden is None else [h[rows] for h in targets.hidden])


def _teacher_targets(teacher: NERModel | None, batch, weights: LossWeights,
                     teacher_layers: tuple[int, ...], autocast, emissions: bool = False) -> TeacherTargets | None:
    want_emissions = weights.kd > 0 or emissions
    if teacher is None or (not want_emissions and weights.hidden == 0):
        return None
    with torch.inference_mode(), autocast():
        out = teacher(batch.input_ids, batch.attention_mask, output_hidden_states=weights.hidden > 0)
        emissions = word_level_emissions(out.logits, batch.word_starts) if want_emissions else None
        hidden = [out.hidden_states[l + 1] for l in teacher_layers] if weights.hidden > 0 else None
    # inference tensors cannot be saved for backward: clone them into normal tensors
    return TeacherTargets(None if emissions is None else emissions.float().clone(),
                          None if hidden is None else [h.clone() for h in hidden])


def _unlabeled_batch(stage: Stage, loop: Loop, labelled: int) -> UnlabeledBatch | None:
    """The unlabelled windows that go with a labelled batch of `labelled` windows (None without them)."""
    unlabeled = stage.unlabeled
    if unlabeled is None:
        return None
    windows = unlabeled.stream.take(unlabeled.windows_for(labelled))
    pad_id = stage.train_tokenizer.pad_token_id
    pseudo = None
    if unlabeled.pseudo_labels:
        label2id = {label: i for i, label in enumerate(stage.student.labels)}
        pseudo = (stage.teacher.labels, label2id, stage.projection.teacher_type_map, unlabeled.threshold)
    return UnlabeledBatch(collate_windows(windows, pad_id).to(stage.runtime.device), unlabeled.weight, pad_id,
                          stage.student.labels.index("O"), pseudo)


def _forward_backward(stage: Stage, loop: Loop, state: LoopState, batch, boundary: bool):
    """Loss and gradients of one micro-batch; an optimizer step at an accumulation boundary."""
    # DDP averages gradients across ranks only at the boundary
    sync = loop.model.no_sync() if stage.runtime.distributed and not boundary else nullcontext()
    try:
        with sync:
            loss, terms = step_loss(loop.model, stage.student, stage.teacher, batch, stage.weights,
                                    stage.temperature, loop.mapping, loop.autocast, loop.student_ids,
                                    _unlabeled_batch(stage, loop, batch.input_ids.size(0)))
            loop.optim.backward(loss, stage.training.grad_accumulation_steps)
        if boundary:
            loop.optim.step()
    except torch.cuda.OutOfMemoryError as error:
        raise PipelineError(_oom_message(stage, state, batch)) from error
    return loss, terms


def _write_log_line(stage: Stage, state: LoopState, running: RunningLoss, learning_rate: float,
                    report: "TensorBoardReport | None" = None) -> dict:
    record = {"epoch": state.epoch + 1, "step": state.global_step, "lr": learning_rate}
    record.update(running.read_and_reset(stage.runtime.world_size))  # the one device sync per log line
    if stage.runtime.is_main:
        _append_log(stage.run_dir, record)
        if report is not None:
            report.train_line(record)
    return record


def _append_log(run_dir: Path, record: dict) -> None:
    with (run_dir / LOG_FILE).open("a") as log:
        log.write(json.dumps(record) + "\n")


def val_record(epoch: int, step: int, scores: dict) -> dict:
    """The log line of an epoch's validation: val_precision, val_recall, val_f1, then the same per
    entity type (val_precision_PER, ...)."""
    record = {"epoch": epoch, "step": step}
    for suffix, values in [("", scores["overall"])] + [(f"_{t}", s) for t, s in sorted(scores["per_type"].items())]:
        record.update({f"val_{name}{suffix}": values[name] for name in ("precision", "recall", "f1")})
    return record


class TensorBoardReport:
    """training.report_to: tensorboard: the log lines and each epoch's validation scores as
    scalars in RUN/tensorboard/, against optimizer steps."""

    def __init__(self, run_dir: Path, resumed_at_step: int):
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run hides what the interrupted one logged after its checkpoint
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR),
                                    purge_step=resumed_at_step + 1 if resumed_at_step else None)

    def train_line(self, record: dict) -> None:
        for name, value in record.items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(f"train/{name}", value, record["step"])

    def val(self, record: dict) -> None:
        for name, value in record.items():
            if name.startswith("val_"):
                self.writer.add_scalar(f"val/{name[len('val_'):]}", value, record["step"])
        self.writer.add_scalar("val/epoch", record["epoch"], record["step"])
        self.writer.flush()  # at least once an epoch, so that a watcher sees it

    def close(self) -> None:
        self.writer.close()


def check_report_to(report_to: str) -> None:
    """training.report_to: tensorboard needs the tensorboard package: say so before any slow step."""
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise PipelineError("training.report_to: tensorboard needs the tensorboard package, which is not "
                            "installed. Install it (pip install tensorboard), or set training.report_to: none.")


def _sync_stop(flag: bool, runtime: Runtime, group) -> bool:
    """Every rank must stop at the same step: any rank's signal stops all."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([1 if flag else 0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(value.item())


def _oom_message(stage: Stage, state: LoopState, batch) -> str:
    size, length = batch.input_ids.shape
    return (f"CUDA out of memory at epoch {state.epoch + 1}, step {state.global_step}, on a batch of "
            f"{size} windows x {length} subwords (training.batch_size={stage.training.batch_size}, "
            f"data.max_seq_length={stage.max_length}, precision {stage.precision}). Lower "
            "training.batch_size (raise training.grad_accumulation_steps to keep the effective batch), "
            "lower data.max_seq_length, or set training.mixed_precision to bf16 (or fp16). "
            f"Checkpoints already in {checkpoint_dir(stage.run_dir)} are kept: after changing the config, "
            "rerun with --resume to continue from the last one.")


# ---------------------------------------------------------------------------
# Checkpoints

def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def machine_record(runtime: Runtime) -> dict:
    """What, besides the config, decides a run's floating-point results: a resume on a machine that
    differs here continues correctly, but its numbers drift from an uninterrupted run's."""
    device = runtime.device
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_threads": torch.get_num_threads(), "processes": runtime.world_size, "torch": str(torch.__version__)}


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint: a sibling of the run folder, never inside the model folder."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + CHECKPOINT_SUFFIX)


def save_checkpoint(stage: Stage, loop: Loop, state: LoopState, running: RunningLoss) -> None:
    """Write the checkpoint folder as a whole (main process only): staged, then swapped in, so a
    crash keeps the last one."""
    if stage.unlabeled is not None:
        positions = [stage.unlabeled.stream.state()]
        if stage.runtime.distributed:  # each rank reads its own share of the notes: keep every position
            positions = [None] * stage.runtime.world_size
            torch.distributed.all_gather_object(positions, stage.unlabeled.stream.state(), group=loop.stop_group)
        state.unlabeled_positions = positions
    if not stage.runtime.is_main:
        return
    saved = replace(state, log_sums=running.saved(), log_batches=running.batches)
    with publishing(checkpoint_dir(stage.run_dir)) as staging:
        save_model(stage.student, stage.tokenizer, staging)
        torch.save({**loop.optim.state_dict(), "rng": _rng_state(), "state": asdict(saved),
                    "config": stage.config_record, "machine": machine_record(stage.runtime)},
                   staging / TRAINER_STATE)
    legacy = stage.run_dir / LEGACY_CHECKPOINT_DIR
    if (legacy / TRAINER_STATE).is_file():  # a resumed older run: its checkpoint now lives beside it
        shutil.rmtree(legacy)


def find_checkpoint(run_dir: Path) -> Path:
    """The run's last complete checkpoint (also after a crash in the middle of a swap)."""
    for candidate in (find_published(checkpoint_dir(run_dir)), find_published(run_dir / LEGACY_CHECKPOINT_DIR)):
        if candidate is not None and (candidate / TRAINER_STATE).is_file():
            return candidate
    raise PipelineError(f"--resume: no checkpoint for {run_dir} (expected {checkpoint_dir(run_dir)}/"
                        f"{TRAINER_STATE}). Start the run again without --resume.")


def load_student_for_resume(run_dir: Path, device) -> tuple[NERModel, object]:
    """The student as saved in the run's checkpoint (its architecture comes from there)."""
    return load_model(find_checkpoint(run_dir), device)



# ---------------------------------------------------------------------------
# What train_kd.py and finetune_postprune.py share around the loop

@dataclass
class TrainResult:
    state: LoopState
    stopped_by: str | None       # a signal name when interrupted
    early_stopped: bool
    test_scores: dict | None
    wall_time: float


def add_run_args(parser, default_output: str) -> None:
    """--output, --resume, --overwrite and --device, as every training stage takes them."""
    parser.add_argument("--output", default=default_output,
                        help=f"run folder: best model, logs, checkpoint (default {default_output})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --output holds and start afresh")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = CUDA when available (default)")


def prepare_run_dir(args, runtime: Runtime, create: bool = True) -> Path:
    """The main process checks (and with `create`, makes) the run folder; the others wait.

    Scripts check first, before the slow steps, and create it just before training, so a
    bad data file or teacher never costs the results of an earlier run (--overwrite).
    """
    if runtime.is_main:
        claim_output(args.output)
        prepare_output_dir(args.output, overwrite=args.overwrite, resume=args.resume, create=create)
        stale = find_published(checkpoint_dir(args.output))
        if stale is not None and not args.resume:
            if not args.overwrite:
                raise PipelineError(f"{stale} holds the checkpoint of an earlier run into {args.output}. Use "
                                    "--resume to continue that run, --overwrite to start afresh (it deletes the "
                                    "checkpoint), or choose another --output.")
            if create:
                shutil.rmtree(stale)
    if runtime.distributed and create:
        torch.distributed.barrier()
    return Path(args.output)


def run_stage(stage: Stage, data: StageData, resume: bool) -> int:
    """Encode the data, train, and write the summary: the part train_kd.py and
    finetune_postprune.py share. Returns the exit code."""
    student, tokenizer, max_length = stage.student, stage.tokenizer, stage.max_length
    label2id = {label: i for i, label in enumerate(student.labels)}
    encoded = EncodedData(
        encode_sentences(stage.train_tokenizer, [list(e.tokens) for e in data.train], max_length,
                         tags=[list(e.tags) for e in data.train], label2id=label2id),
        make_eval_set(tokenizer, data.val, max_length),
        make_eval_set(tokenizer, data.test, max_length) if data.test else None)
    runtime = stage.runtime
    stage.say(f"{len(data.train)} train sentences ({len(encoded.train)} windows), {len(data.val)} val; device "
              f"{runtime.device} x{runtime.world_size}, precision {stage.precision}; loss weights "
              + ", ".join(f"{k} {v}" for k, v in asdict(stage.weights).items() if v) + ".")
    summary = {"stage": stage.name,
               "parameters": {"student": count_parameters(student)}, "heads_per_layer": heads_per_layer(student),
               "precision": stage.precision, "device": str(runtime.device), "world_size": runtime.world_size,
               "package_versions": package_versions(), "command": stage.command, "config": stage.config_record,
               "data": stage_data(stage.config_record["data"], {"train": len(data.train), "validation": len(data.val),
                                                                **({"test": len(data.test)} if data.test else {})})}
    if stage.unlabeled is not None:
        stage.say(f"Unlabelled: {stage.unlabeled.describe()}")
        summary["unlabeled"] = stage.unlabeled.record()
        summary["data"]["unlabeled"] = {"file": ", ".join(stage.unlabeled.scan.files),
                                        "sentences": stage.unlabeled.scan.notes}
    if stage.teacher is not None:
        summary["teacher"] = stage.teacher.info.teacher
        summary["parameters"]["teacher"] = count_parameters(stage.teacher)
        summary["label_projection"] = stage.projection.describe()
    with StopFlag() as stop:
        result = train(stage, encoded, stop, resume=resume)
    return finish_run(stage, result, summary)


def finish_run(stage: Stage, result: TrainResult, summary: dict) -> int:
    """Write training_summary.json, or after a signal say how to resume; return the exit code."""
    if not stage.runtime.is_main:
        return 0
    run_dir, state = stage.run_dir, result.state
    if result.stopped_by is not None:
        command = " ".join(["python"] + [a for a in stage.command if a not in ("--overwrite", "--resume")]
                           + ["--resume"])
        print(f"\nStopped by {result.stopped_by} at epoch {state.epoch + 1}, step "
              f"{state.global_step}. Checkpoint saved in {checkpoint_dir(run_dir)}.\n"
              f"Resume with:\n  {command}")
        return 143 if result.stopped_by == "SIGTERM" else 130
    summary.update({
        "best_epoch": state.best_epoch,
        "val": state.best_scores,
        "test": result.test_scores,
        "epochs_run": state.epoch,
        "optimizer_steps": state.global_step,
        "early_stopped": result.early_stopped,
        "history": state.history,
        "wall_time_s": round(result.wall_time, 1),
    })
    write_json(run_dir / SUMMARY_FILE, summary)
    draw_curves(curves_data(run_dir), run_dir / CURVES_FILE)
    scores = {"validation": state.best_scores, **({"test": result.test_scores} if result.test_scores else {})}
    card = card_for_model(stage.student, run_dir.name, stage.name, summary["data"], scores,
                          headline_split="test" if result.test_scores else "validation",
                          pictures=pictures_in(run_dir))
    write_text(run_dir / CARD_NAME, card)
    test = (f", test F1 {result.test_scores['overall']['f1']:.4f}" if result.test_scores else "")
    print(f"\nBest model (epoch {state.best_epoch}, val F1 {state.best_f1:.4f}{test}) saved in {run_dir}; "
          f"summary in {run_dir / SUMMARY_FILE}.")
    return 0
