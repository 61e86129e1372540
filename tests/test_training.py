"""training.py's pieces: one Stage built from the config, the running loss sums, the saved loop state.
(The loop end to end, resume and DDP are tested through the stage scripts: test_train_kd.py,
test_finetune_postprune.py.)"""
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from config import load_config
from conftest import REPO
from models import load_model
from training import LoopState, RunningLoss, Stage
from utils import Runtime

MAIN_CONFIG = REPO / "configs" / "kd_camembert.yaml"


@pytest.fixture(scope="module")
def student(stage1_artifact):
    model, tokenizer = load_model(stage1_artifact)
    return model, tokenizer


def make_stage(name, student, teacher, overrides=()):
    model, tokenizer = student
    config = load_config(MAIN_CONFIG, list(overrides), check_files=False)
    return Stage.create(name, config, model, teacher, tokenizer, None, Runtime(torch.device("cpu")),
                        Path("run"), [f"{name}.py"]), config


def test_stage_one_reads_training_and_distillation(student):
    stage, config = make_stage("kd", student, student[0], ["data.max_seq_length=4096", "training.max_epochs=3"])
    assert stage.training == config.training and stage.training.max_epochs == 3
    assert stage.weights == config.distillation.weights and stage.temperature == 2.5
    assert stage.precision == "fp32"                   # auto on a CPU
    assert stage.max_length == student[0].max_subwords  # the position embeddings cap data.max_seq_length
    assert stage.config_record["training"]["max_epochs"] == 3


def test_stage_three_takes_the_finetune_values_and_drops_what_cannot_apply(student):
    stage, config = make_stage("finetune", student, None, ["finetune.epochs=5", "finetune.learning_rate=1e-4",
                                                           "training.batch_size=3", "data.max_seq_length=64"])
    assert (stage.training.max_epochs, stage.training.learning_rate, stage.training.batch_size) == (5, 1e-4, 3)
    assert (stage.weights.ce, stage.weights.crf) == (config.finetune.weights.ce, config.finetune.weights.crf)
    assert (stage.weights.kd, stage.weights.hidden) == (0.0, 0.0)        # no teacher
    assert stage.max_length == 64
    # the config record is the config as loaded, not the stage's view of it
    assert stage.config_record["training"]["max_epochs"] == config.training.max_epochs


def test_a_student_without_crf_trains_without_the_crf_term(student):
    model, tokenizer = student
    crf, model.crf = model.crf, None
    try:
        stage, _ = make_stage("kd", student, model)
    finally:
        model.crf = crf
    assert stage.weights.crf == 0.0 and stage.weights.kd > 0


def test_running_loss_means_and_reset():
    running = RunningLoss({"ce": 1.0, "loss": 2.0}, batches=1)          # as restored from a checkpoint
    running.add(torch.tensor(4.0), {"ce": torch.tensor(3.0)}, windows=8)
    assert running.saved() == {"ce": 4.0, "loss": 6.0} and running.batches == 2
    record = running.read_and_reset(world_size=2)
    assert (record["ce"], record["loss"]) == (2.0, 3.0) and record["samples_per_s"] > 0
    assert list(record) == ["ce", "loss", "samples_per_s"]
    assert running.saved() == {} and running.batches == 0


def test_loop_state_reads_checkpoints_of_both_layouts():
    state = LoopState(epoch=1, global_step=9, log_sums={"ce": 1.5, "loss": 2.5}, log_batches=3)
    assert LoopState.from_checkpoint(asdict(state)) == state
    # checkpoints written before this version kept the batch count among the sums
    older = {k: v for k, v in asdict(state).items() if k != "log_batches"}
    older["log_sums"] = {"ce": 1.5, "loss": 2.5, "_batches": 3.0}
    assert LoopState.from_checkpoint(older) == state
