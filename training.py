"""The training loop shared by train_kd.py and finetune_postprune.py.

One epoch = the training windows in length-grouped, shuffled batches; after each epoch the
student is scored on the validation sentences (seqeval strict IOB2) and the best one is
saved into the run folder. The run folder also holds `training_log.jsonl`,
`training_summary.json` and `checkpoint/` (model + optimizer, scheduler, scaler, RNG
states and counters), from which `--resume` continues exactly where the run stopped.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data_loader import (EncodedWindow, Example, LengthGroupedBatchSampler, collate_windows, encode_sentences,
                         read_examples)
from decoding import predict_windows, seqeval_scores, word_level_emissions
from losses import KDMapping, TeacherTargets, combined_loss
from models import LabelProjection, NERModel, count_parameters, heads_per_layer, load_model, save_model
from utils import (LossWeights, PipelineError, Runtime, TrainingConfig, autocast_for, package_versions,
                   prepare_output_dir, write_json)

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer_state.pt"
LOG_FILE = "training_log.jsonl"
SUMMARY_FILE = "training_summary.json"


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs, resolved from the config by the stage script."""
    epochs: int
    learning_rate: float
    weights: LossWeights
    temperature: float
    precision: str                      # fp32, bf16 or fp16 (already resolved)
    max_length: int                     # subwords per window
    batch_size: int
    eval_batch_size: int
    crf_learning_rate: float
    warmup_ratio: float
    weight_decay: float
    grad_accumulation_steps: int
    max_grad_norm: float
    early_stopping_patience: int
    log_every_steps: int
    checkpoint_every_steps: int
    seed: int
    num_workers: int

    @classmethod
    def from_config(cls, training: TrainingConfig, **values) -> "TrainSettings":
        shared = {k: getattr(training, k) for k in (
            "batch_size", "eval_batch_size", "crf_learning_rate", "warmup_ratio", "weight_decay",
            "grad_accumulation_steps", "max_grad_norm", "early_stopping_patience", "log_every_steps",
            "checkpoint_every_steps", "seed", "num_workers")}
        return cls(**shared, **values)


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

    def request(self, reason: str = "request") -> None:
        self.signal_name = reason

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


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


@dataclass
class TrainResult:
    state: LoopState
    stopped_by: str | None       # a signal name when interrupted
    early_stopped: bool
    test_scores: dict | None
    wall_time: float


def _optimizer(model: NERModel, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm; the CRF at its own learning rate."""
    decay, no_decay, crf = [], [], []
    for name, parameter in model.named_parameters():
        if name.startswith("crf."):
            crf.append(parameter)
        elif parameter.ndim == 1:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if crf:
        groups.append({"params": crf, "weight_decay": 0.0, "lr": settings.crf_learning_rate})
    return torch.optim.AdamW(groups, lr=settings.learning_rate)


def _linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _teacher_targets(teacher: NERModel | None, batch, weights: LossWeights,
                     teacher_layers: tuple[int, ...], autocast) -> TeacherTargets | None:
    if teacher is None or (weights.kd == 0 and weights.hidden == 0):
        return None
    with torch.inference_mode(), autocast():
        out = teacher(batch.input_ids, batch.attention_mask, output_hidden_states=weights.hidden > 0)
        emissions = word_level_emissions(out.logits, batch.word_starts) if weights.kd > 0 else None
        hidden = [out.hidden_states[l + 1] for l in teacher_layers] if weights.hidden > 0 else None
    # inference tensors cannot be saved for backward: clone them into normal tensors
    return TeacherTargets(None if emissions is None else emissions.float().clone(),
                          None if hidden is None else [h.clone() for h in hidden])


def step_loss(model, student: NERModel, teacher: NERModel | None, batch, weights: LossWeights, temperature: float,
              mapping: KDMapping | None, autocast=nullcontext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The forward half of a training step: teacher targets, student outputs, weighted losses.

    `model` is the student or its DDP wrapper. Nothing here waits for the device (no
    data-dependent shapes, no .item()), so the GPU runs ahead of Python between log steps.
    """
    targets = _teacher_targets(teacher, batch, weights, student.info.teacher_layers, autocast)
    with autocast():
        out = model(batch.input_ids, batch.attention_mask, output_hidden_states=weights.hidden > 0)
        emissions = word_level_emissions(out.logits, batch.word_starts)
        hidden = list(out.hidden_states[1:]) if weights.hidden > 0 else None
        return combined_loss(emissions, hidden, targets, batch.word_labels, batch.word_mask, batch.attention_mask,
                             student.crf, weights, mapping, temperature)


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


def save_checkpoint(model: NERModel, tokenizer, optimizer, scheduler, scaler, state: LoopState,
                    run_dir: Path, config_record: dict) -> Path:
    """Write checkpoint/ as a whole: staged, then swapped in, so a crash keeps the last one."""
    target, staging, old = (run_dir / CHECKPOINT_DIR, run_dir / f"{CHECKPOINT_DIR}.saving",
                            run_dir / f"{CHECKPOINT_DIR}.old")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, tokenizer, staging)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "state": asdict(state),
                "config": config_record}, staging / TRAINER_STATE)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def find_checkpoint(run_dir: Path) -> Path:
    """The run's last complete checkpoint (also after a crash in the middle of a swap)."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = run_dir / name
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    raise PipelineError(f"--resume: no checkpoint in {run_dir} (expected {run_dir / CHECKPOINT_DIR}/"
                        f"{TRAINER_STATE}). Start the run again without --resume.")


def load_student_for_resume(run_dir: Path, device) -> tuple[NERModel, object]:
    """The student as saved in the run's checkpoint (its architecture comes from there)."""
    return load_model(find_checkpoint(run_dir), device)


def _describe_config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _describe_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def _sync_stop(flag: bool, runtime: Runtime, group) -> bool:
    """Every rank must stop at the same step: any rank's signal stops all."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([1 if flag else 0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(value.item())


def _oom_message(batch, settings: TrainSettings, run_dir: Path, state: LoopState) -> str:
    size, length = batch.input_ids.shape
    return (f"CUDA out of memory at epoch {state.epoch + 1}, step {state.global_step}, on a batch of "
            f"{size} windows x {length} subwords (training.batch_size={settings.batch_size}, "
            f"data.max_seq_length={settings.max_length}, precision {settings.precision}). Lower "
            "training.batch_size (raise training.grad_accumulation_steps to keep the effective batch), "
            "lower data.max_seq_length, or set training.mixed_precision to bf16 (or fp16). "
            f"Checkpoints already in {run_dir / CHECKPOINT_DIR} are kept: after changing the config, "
            "rerun with --resume to continue from the last one.")


def train(student: NERModel, teacher: NERModel | None, tokenizer, train_windows: list[EncodedWindow],
          val_set: EvalSet, test_set: EvalSet | None, settings: TrainSettings, run_dir: Path,
          runtime: Runtime, stop: StopFlag, config_record: dict, kd_mapping: KDMapping | None = None,
          resume: bool = False) -> TrainResult:
    """Train `student` (optionally distilling from `teacher`) and keep the best model in run_dir."""
    started = time.time()
    device, main = runtime.device, runtime.is_main
    autocast = autocast_for(settings.precision, device)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    mapping = kd_mapping.to(device) if kd_mapping is not None else None
    model = student
    if runtime.distributed:
        unused = student.crf is not None and settings.weights.crf == 0
        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=unused)
    stop_group = torch.distributed.new_group(backend="gloo") if runtime.distributed else None

    sampler = LengthGroupedBatchSampler([len(w.input_ids) for w in train_windows], settings.batch_size,
                                        settings.seed, num_replicas=runtime.world_size, rank=runtime.rank)
    # a private generator: creating the loader must not consume the global RNG (resume equivalence)
    loader = DataLoader(train_windows, batch_sampler=sampler, num_workers=settings.num_workers,
                        collate_fn=partial(collate_windows, pad_id=tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(settings.seed),
                        pin_memory=device.type == "cuda")
    batches_per_epoch = len(sampler)
    steps_per_epoch = math.ceil(batches_per_epoch / settings.grad_accumulation_steps)
    optimizer = _optimizer(student, settings)
    scheduler = _linear_schedule(optimizer, steps_per_epoch * settings.epochs, settings.warmup_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    state, rng_to_restore = LoopState(), None
    log_path = run_dir / LOG_FILE
    if resume:
        checkpoint = torch.load(find_checkpoint(run_dir) / TRAINER_STATE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state, rng_to_restore = LoopState(**checkpoint["state"]), checkpoint["rng"]
        changes = _describe_config_changes(checkpoint.get("config", {}), config_record)
        if main:
            print(f"Resuming from epoch {state.epoch + 1}, step {state.global_step} "
                  f"(best val F1 so far {max(state.best_f1, 0):.4f}).")
            if changes:
                print("The config differs from the interrupted run's (results will not match an "
                      "uninterrupted run exactly):\n  " + "\n  ".join(changes))
            if log_path.exists():  # drop lines logged after the checkpoint
                lines = [l for l in log_path.read_text().splitlines() if l.strip()
                         and json.loads(l).get("step", 0) <= state.global_step]
                log_path.write_text("".join(l + "\n" for l in lines))
    else:
        if main:
            log_path.write_text("")
        # the starting point, so the summary shows what training gained
        initial = evaluate(student, val_set, tokenizer.pad_token_id, settings.eval_batch_size, device, autocast)
        state.history.append({"epoch": 0, "step": 0, "val": initial})

    running: dict[str, torch.Tensor | float] = dict(state.log_sums)
    window_count, window_clock = 0, time.time()
    stopped_by, early_stopped = None, 0 < settings.early_stopping_patience <= state.bad_epochs

    def checkpoint_now():
        state.log_sums = {name: float(value) for name, value in running.items()}
        if main:
            save_checkpoint(student, tokenizer, optimizer, scheduler, scaler, state, run_dir, config_record)

    while state.epoch < settings.epochs and not early_stopped:
        sampler.set_epoch(state.epoch, skip_batches=state.batches_done)
        if rng_to_restore is not None:
            _restore_rng(rng_to_restore)
            rng_to_restore = None
        progress = tqdm(loader, total=batches_per_epoch, initial=state.batches_done, disable=not main,
                        desc=f"epoch {state.epoch + 1}/{settings.epochs}", dynamic_ncols=True)
        for batch in progress:
            batch = batch.to(device)
            boundary = ((state.batches_done + 1) % settings.grad_accumulation_steps == 0
                        or state.batches_done + 1 == batches_per_epoch)
            sync = model.no_sync() if runtime.distributed and not boundary else nullcontext()
            try:
                with sync:
                    loss, terms = step_loss(model, student, teacher, batch, settings.weights, settings.temperature,
                                            mapping, autocast)
                    scaler.scale(loss / settings.grad_accumulation_steps).backward()
                if boundary:
                    scaler.unscale_(optimizer)
                    if settings.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
            except torch.cuda.OutOfMemoryError as error:
                raise PipelineError(_oom_message(batch, settings, run_dir, state)) from error
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value.detach()
            running["loss"] = running.get("loss", 0.0) + loss.detach()
            running["_batches"] = running.get("_batches", 0) + 1
            window_count += batch.input_ids.size(0)
            state.batches_done += 1
            if not boundary:
                continue
            state.global_step += 1
            if state.global_step % settings.log_every_steps == 0:
                record = _log_record(running, state, scheduler, window_count * runtime.world_size,
                                     time.time() - window_clock)
                running, window_count, window_clock = {}, 0, time.time()
                if main:
                    with log_path.open("a") as log:
                        log.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if _sync_stop(stop.requested, runtime, stop_group):
                checkpoint_now()
                stopped_by = stop.signal_name or "a stop on another rank"
                break
            if settings.checkpoint_every_steps and state.global_step % settings.checkpoint_every_steps == 0:
                checkpoint_now()
        progress.close()
        if stopped_by:
            break
        scores = evaluate(student, val_set, tokenizer.pad_token_id, settings.eval_batch_size, device, autocast)
        improved = scores["overall"]["f1"] > state.best_f1
        state.history.append({"epoch": state.epoch + 1, "step": state.global_step, "val": scores})
        if improved:
            state.best_f1, state.best_epoch, state.best_scores, state.bad_epochs = (
                scores["overall"]["f1"], state.epoch + 1, scores, 0)
            if main:
                save_model(student, tokenizer, run_dir)
        else:
            state.bad_epochs += 1
        if main:
            print(f"epoch {state.epoch + 1}: val P {scores['overall']['precision']:.4f} "
                  f"R {scores['overall']['recall']:.4f} F1 {scores['overall']['f1']:.4f}"
                  + ("  (best, saved)" if improved else f"  (best {state.best_f1:.4f} at epoch {state.best_epoch})"))
        state.epoch, state.batches_done = state.epoch + 1, 0
        early_stopped = 0 < settings.early_stopping_patience <= state.bad_epochs and state.epoch < settings.epochs
        checkpoint_now()
        if early_stopped and main:
            print(f"Early stopping: no val F1 improvement for {state.bad_epochs} epochs.")
    state.elapsed += time.time() - started
    test_scores = None
    if runtime.distributed:
        torch.distributed.barrier()  # rank 0 has finished writing the best model
    if main and stopped_by is None and test_set is not None and state.best_epoch > 0:
        best, _ = load_model(run_dir, device)
        test_scores = evaluate(best, test_set, tokenizer.pad_token_id, settings.eval_batch_size, device, autocast)
    return TrainResult(state, stopped_by, early_stopped, test_scores, state.elapsed)


def _log_record(running: dict, state: LoopState, scheduler, windows: int, seconds: float) -> dict:
    batches = running.pop("_batches")
    record = {"epoch": state.epoch + 1, "step": state.global_step, "lr": scheduler.get_last_lr()[0]}
    record.update({name: float(value) / batches for name, value in running.items()})  # one sync per log
    record["samples_per_s"] = windows / max(seconds, 1e-9)
    return record


# ---------------------------------------------------------------------------
# What train_kd.py and finetune_postprune.py share around the loop

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
        prepare_output_dir(args.output, overwrite=args.overwrite, resume=args.resume, create=create)
    if runtime.distributed and create:
        torch.distributed.barrier()
    return Path(args.output)


@dataclass
class StageData:
    """The examples a training stage reads (checked before any slow step)."""
    train: list[Example]
    val: list[Example]
    test: list[Example] | None


def read_stage_data(train_file: str, val_file: str, test_file: str | None, label2id: dict[str, int]) -> StageData:
    return StageData(read_examples(train_file, label2id), read_examples(val_file, label2id),
                     read_examples(test_file, label2id) if test_file else None)


def run_stage(stage: str, student: NERModel, teacher: NERModel | None, tokenizer, data: StageData,
              settings: TrainSettings, projection: LabelProjection | None, run_dir: Path, runtime: Runtime,
              config_record: dict, resume: bool, argv: list[str]) -> int:
    """Encode the data, train, and write the summary: the part train_kd.py and
    finetune_postprune.py share. Returns the exit code."""
    say = print if runtime.is_main else (lambda *a, **k: None)
    label2id = {label: i for i, label in enumerate(student.labels)}
    train_windows = encode_sentences(tokenizer, [list(e.tokens) for e in data.train], settings.max_length,
                                     tags=[list(e.tags) for e in data.train], label2id=label2id)
    val_set = make_eval_set(tokenizer, data.val, settings.max_length)
    test_set = make_eval_set(tokenizer, data.test, settings.max_length) if data.test else None
    say(f"{len(data.train)} train sentences ({len(train_windows)} windows), {len(data.val)} val; device "
        f"{runtime.device} x{runtime.world_size}, precision {settings.precision}; loss weights "
        + ", ".join(f"{k} {v}" for k, v in asdict(settings.weights).items() if v) + ".")
    summary = {"stage": stage,
               "parameters": {"student": count_parameters(student)}, "heads_per_layer": heads_per_layer(student),
               "precision": settings.precision, "device": str(runtime.device), "world_size": runtime.world_size,
               "package_versions": package_versions(), "command": argv, "config": config_record}
    if teacher is not None:
        summary["teacher"] = teacher.info.teacher
        summary["parameters"]["teacher"] = count_parameters(teacher)
        summary["label_projection"] = projection.describe()
    mapping = KDMapping.from_projection(projection) if teacher is not None and settings.weights.kd > 0 else None
    with StopFlag() as stop:
        result = train(student, teacher, tokenizer, train_windows, val_set, test_set, settings, run_dir,
                       runtime, stop, config_record, kd_mapping=mapping, resume=resume)
    return finish_run(result, run_dir, summary, runtime, argv)


def finish_run(result: TrainResult, run_dir: Path, summary: dict, runtime: Runtime, argv: list[str]) -> int:
    """Write training_summary.json, or after a signal say how to resume; return the exit code."""
    if not runtime.is_main:
        return 0
    if result.stopped_by is not None:
        command = " ".join(["python"] + [a for a in argv if a not in ("--overwrite", "--resume")] + ["--resume"])
        print(f"\nStopped by {result.stopped_by} at epoch {result.state.epoch + 1}, step "
              f"{result.state.global_step}. Checkpoint saved in {run_dir / CHECKPOINT_DIR}.\n"
              f"Resume with:\n  {command}")
        return 143 if result.stopped_by == "SIGTERM" else 130
    state = result.state
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
    test = (f", test F1 {result.test_scores['overall']['f1']:.4f}" if result.test_scores else "")
    print(f"\nBest model (epoch {state.best_epoch}, val F1 {state.best_f1:.4f}{test}) saved in {run_dir}; "
          f"summary in {run_dir / SUMMARY_FILE}.")
    return 0
