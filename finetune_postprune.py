"""Stage 3: fine-tune the pruned student back, keeping its pruned shape.

    python finetune_postprune.py --model artifacts/student_10L_pruned --output artifacts/student_10L_final --epochs 2
    python finetune_postprune.py --model artifacts/student_10L_pruned --set finetune.use_teacher=false
    python finetune_postprune.py --output artifacts/student_10L_final --resume      # after a stopped pod

Uses the training loop of stage 1 with the config's `finetune` section: its epochs, learning
rate and loss weights (gold-label CE and CRF, plus KD from the teacher when
`finetune.use_teacher` is true). Writes into --output what stage 1 writes: the best model by
val F1 with its README.md model card, training_log.jsonl, training_summary.json,
training_curves.png (and a copy of stage 2's heads_pruned.png, which the card shows too), and the
checkpoint in <output>.checkpoint/.
"""
import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from config import add_config_args, load_config, stage_config
from models import count_parameters, heads_per_layer, load_model, load_teacher, project_labels
from plots import PRUNING_FILE
from training import (Stage, add_run_args, check_report_to, load_student_for_resume, prepare_run_dir,
                      read_stage_data, run_stage)
from utils import close_runtime, init_runtime, releasing_claims, run_cli, set_seed
from vocabulary import teacher_to_student_ids


@releasing_claims
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", default="artifacts/student_10L_pruned", help="the pruned student (stage 2)")
    add_run_args(parser, default_output="artifacts/student_10L_final")
    parser.add_argument("--epochs", type=int, help="overrides finetune.epochs")
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"finetune.epochs={args.epochs}"] if args.epochs is not None else [])
    config = load_config(args.config, overrides)
    check_report_to(config.training.report_to)
    runtime = init_runtime(args.device)
    say = print if runtime.is_main else (lambda *a, **k: None)
    prepare_run_dir(args, runtime, create=False)

    student, tokenizer = load_model(args.model)
    student.info = replace(student.info, stage="finetuned")
    label2id = {label: i for i, label in enumerate(student.labels)}
    data = read_stage_data(config.data, label2id)
    weights = stage_config(config, "finetune").distillation.weights
    teacher = teacher_tokenizer = projection = None
    if config.finetune.use_teacher and (weights.kd > 0 or weights.hidden > 0):
        say(f"Loading teacher {config.teacher.model_name} ...")
        teacher, teacher_tokenizer = load_teacher(config.teacher.model_name)
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            teacher_to_student_ids(teacher_tokenizer, tokenizer)  # a trimmed student's pieces must be the teacher's
        projection = project_labels(list(teacher.labels), list(student.labels), config.distillation.label_map)
        say(projection.describe())
    else:
        say("Fine-tuning on gold labels only (no teacher).")
    run_dir = prepare_run_dir(args, runtime)
    if runtime.is_main and (Path(args.model) / PRUNING_FILE).is_file():  # the final model's card shows it too
        shutil.copy2(Path(args.model) / PRUNING_FILE, run_dir / PRUNING_FILE)
    set_seed(config.training.seed)
    if args.resume:
        student, _ = load_student_for_resume(run_dir, "cpu")
    say(f"Student from {args.model}: heads per layer {heads_per_layer(student)}, "
        f"{count_parameters(student) / 1e6:.1f}M parameters.")

    command = ["finetune_postprune.py"] + list(argv if argv is not None else sys.argv[1:])
    stage = Stage.create("finetune", config, student, teacher, tokenizer, projection, runtime, run_dir, command,
                         teacher_tokenizer=teacher_tokenizer, unlabeled_scan=data.unlabeled)
    code = run_stage(stage, data, resume=args.resume)
    close_runtime(runtime)
    return code


if __name__ == "__main__":
    run_cli(main)
