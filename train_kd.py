"""Stage 1: distil the teacher into a shallower student (knowledge distillation).

    python train_kd.py --config configs/kd_camembert.yaml --output artifacts/student_10L
    python train_kd.py --set training.max_epochs=1 --set teacher.model_name=/path/to/teacher
    python train_kd.py --output artifacts/student_10L --resume          # after a stopped pod
    torchrun --nproc_per_node 2 train_kd.py --output artifacts/student_10L   # several GPUs (DDP)

Writes into --output: the best student by val F1 (config.json, model.safetensors, tokenizer
files, a README.md model card), training_log.jsonl, training_summary.json and training_curves.png
(with training.report_to: tensorboard, event files in <output>/tensorboard/ too); the checkpoint goes to
the sibling folder <output>.checkpoint/. With student.trim_vocabulary
the student keeps only the vocabulary pieces the data uses (its tokenizer is rewritten).
"""
import argparse
import sys

from config import add_config_args, load_config
from data_loader import read_label2id
from models import build_student, count_parameters, load_teacher, project_labels, select_teacher_layers
from training import (Stage, add_run_args, check_report_to, load_student_for_resume, prepare_run_dir,
                      read_stage_data, run_stage)
from utils import close_runtime, init_runtime, releasing_claims, run_cli, set_seed
from vocabulary import describe_trim, kept_ids, read_vocabulary_texts, trim_embeddings, trim_tokenizer


@releasing_claims
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_run_args(parser, default_output="artifacts/student_10L")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    check_report_to(config.training.report_to)
    runtime = init_runtime(args.device)
    say = print if runtime.is_main else (lambda *a, **k: None)
    prepare_run_dir(args, runtime, create=False)
    label2id = read_label2id(config.data.label2id_file)
    labels = sorted(label2id, key=label2id.get)
    data = read_stage_data(config.data, label2id)

    say(f"Loading teacher {config.teacher.model_name} ...")
    teacher, tokenizer = load_teacher(config.teacher.model_name)
    projection = project_labels(list(teacher.labels), labels, config.distillation.label_map)
    say(projection.describe())
    kept = None
    if config.student.trim_vocabulary and not args.resume:  # a resumed run has its vocabulary already
        sources = [[list(e.tokens) for e in examples] for examples in (data.train, data.val, data.test or [])]
        sources += [read_vocabulary_texts(path) for path in config.student.vocabulary_files]
        kept = kept_ids(tokenizer, sources)
    # a layer choice the teacher cannot give fails before the run folder is made
    layer_ids = select_teacher_layers(len(teacher.info.teacher_layers), config.student.num_layers,
                                      config.student.layers)
    run_dir = prepare_run_dir(args, runtime)
    set_seed(config.training.seed)
    student_tokenizer = tokenizer
    if args.resume:
        student, student_tokenizer = load_student_for_resume(run_dir, "cpu")
    else:
        student = build_student(teacher, layer_ids, labels, projection, config.student.use_crf)
        if kept is not None:
            before = count_parameters(student)
            student_tokenizer = trim_tokenizer(tokenizer, kept)
            trim_embeddings(student, kept)
            say(describe_trim(len(tokenizer), len(kept), before - count_parameters(student)))
    say(f"Student: {len(student.info.teacher_layers)} layers copied from teacher layers "
        f"{list(student.info.teacher_layers)}, CRF {'on' if student.crf is not None else 'off'}, "
        f"{count_parameters(student) / 1e6:.1f}M parameters (teacher {count_parameters(teacher) / 1e6:.1f}M).")

    command = ["train_kd.py"] + list(argv if argv is not None else sys.argv[1:])
    stage = Stage.create("kd", config, student, teacher, student_tokenizer, projection, runtime, run_dir, command,
                         teacher_tokenizer=tokenizer, unlabeled_scan=data.unlabeled)
    code = run_stage(stage, data, resume=args.resume)
    close_runtime(runtime)
    return code


if __name__ == "__main__":
    run_cli(main)
