"""Stage 2: score the student's attention heads (and FFN neurons) on the val set, remove the least important.

    python prune_heads.py --model artifacts/student_10L --rate 0.25 --output artifacts/student_10L_pruned
    python prune_heads.py --model artifacts/student_10L --set pruning.steps=3   # prune in 3 rounds
    python prune_heads.py --model artifacts/student_10L --rate 0.25 --ffn-rate 0.3   # the compact student

The heads are removed physically (their query/key/value rows and output columns), so the
saved model is smaller and faster. Writes into --output, all at once when done: the pruned
model, heads_pruned_mask.json (which heads, keep mask, importance scores),
ffn_pruned_mask.json when FFN neurons are pruned (which neurons, per layer), and
pruning_summary.json (parameters and val scores before and after, time taken), heads_pruned.png
(the importance map of each round, removed heads crossed) and a README.md model card.
"""
import argparse
import sys
import time
from pathlib import Path
from dataclasses import replace

from config import add_config_args, config_to_dict, load_config
from data_loader import batches_by_length, collate_windows, encode_sentences, read_examples
from model_card import CARD_NAME, card_for_model, pictures_in, stage_data
from models import count_parameters, heads_per_layer, load_model, neurons_per_layer, save_model
from plots import PRUNING_FILE, draw_pruning, pruning_data
from precision import autocast_for, resolve_precision
from pruning import heads_record, neurons_record, plan_neuron_count, plan_prune_count, prune_model
from training import SUMMARY_FILE, evaluate, make_eval_set
from utils import (PipelineError, claim_output, init_runtime, package_versions, prepare_output_dir, publishing,
                   releasing_claims, run_cli, write_json, write_text)


@releasing_claims
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", required=True, help="a stage-1 (or already pruned) artifact folder")
    parser.add_argument("--output", default="artifacts/student_10L_pruned", help="folder to write")
    parser.add_argument("--rate", type=float, help="fraction of heads to remove (overrides pruning.rate)")
    parser.add_argument("--ffn-rate", type=float,
                        help="fraction of feed-forward neurons to remove too (overrides pruning.ffn_rate)")
    parser.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="prune a training run that has no training_summary.json (stopped before its end)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    claim_output(args.output)
    output = prepare_output_dir(args.output, overwrite=args.overwrite, create=False)
    runtime = init_runtime(args.device)
    precision = resolve_precision(config.training.mixed_precision, runtime.device)
    autocast = autocast_for(precision, runtime.device)
    started = time.time()

    if Path(args.model, "training_log.jsonl").is_file() and not Path(args.model, SUMMARY_FILE).is_file() \
            and not args.allow_unfinished:
        raise PipelineError(f"--model {args.model}: its training run did not finish (no {SUMMARY_FILE}), so this "
                            "is the best model of the epochs it ran, not of the whole run. Finish it with --resume, "
                            "or prune it as it is with --allow-unfinished.")
    model, tokenizer = load_model(args.model, runtime.device)
    pruning = replace(config.pruning, **{k: v for k, v in (("rate", args.rate), ("ffn_rate", args.ffn_rate))
                                         if v is not None})
    # an impossible rate fails before any work
    plan_prune_count(heads_per_layer(model), pruning.rate, pruning.min_heads_per_layer)
    plan_neuron_count(neurons_per_layer(model), pruning.ffn_rate, pruning.min_ffn_neurons_per_layer)
    label2id = {label: i for i, label in enumerate(model.labels)}
    val_examples = read_examples(config.data.val_file, label2id)
    max_length = min(config.data.max_seq_length, model.position_limit)
    val_set = make_eval_set(tokenizer, val_examples, max_length)
    windows = encode_sentences(tokenizer, val_set.sentences, max_length, tags=val_set.tags, label2id=label2id)
    batches = [collate_windows([windows[i] for i in indices], tokenizer.pad_token_id)
               for indices in batches_by_length(windows, pruning.batch_size)][:pruning.max_batches]
    neurons = f" and {sum(neurons_per_layer(model))} FFN neurons" if pruning.ffn_rate else ""
    print(f"Scoring {sum(heads_per_layer(model))} heads{neurons} in {len(heads_per_layer(model))} layers on "
          f"{sum(b.input_ids.size(0) for b in batches)} val windows ({runtime.device}, {precision}).")

    scores = lambda: evaluate(model, val_set, tokenizer.pad_token_id, config.training.eval_batch_size,
                              runtime.device, autocast)
    before, parameters_before = scores(), count_parameters(model)
    heads_before, neurons_before = heads_per_layer(model), neurons_per_layer(model)
    steps = prune_model(model, batches, pruning.rate, pruning.min_heads_per_layer, pruning.steps, pruning.normalize,
                        runtime.device, autocast, ffn_rate=pruning.ffn_rate,
                        min_ffn_neurons_per_layer=pruning.min_ffn_neurons_per_layer)
    after = scores()
    mask = heads_record(model, steps, pruning, heads_before)
    neurons_mask = neurons_record(model, steps, pruning, neurons_before) if model.info.pruned_neurons else None
    summary = {
        "model": str(args.model),
        "parameters": {"before": parameters_before, "after": count_parameters(model)},
        "heads_per_layer": {"before": heads_before, "after": heads_per_layer(model)},
        **({"ffn_neurons_per_layer": {"before": neurons_before, "after": neurons_per_layer(model)}}
           if neurons_mask else {}),
        "val_before": before,
        "val_after": after,
        "time_s": round(time.time() - started, 1),
        "device": str(runtime.device),
        "precision": precision,
        "package_versions": package_versions(),
        "command": ["prune_heads.py"] + list(argv if argv is not None else sys.argv[1:]),
        "config": config_to_dict(config),
        "data": stage_data(config_to_dict(config)["data"], {"validation": len(val_examples)}),
    }
    scores = {"validation (before pruning)": before, "validation": after}
    with publishing(output) as staging:
        save_model(model, tokenizer, staging, stage="pruned")
        write_json(staging / "heads_pruned_mask.json", mask)
        if neurons_mask:
            write_json(staging / "ffn_pruned_mask.json", neurons_mask)
        write_json(staging / "pruning_summary.json", summary)
        draw_pruning(pruning_data(staging, name=output.name), staging / PRUNING_FILE)
        write_text(staging / CARD_NAME, card_for_model(model, output.name, "pruned", summary["data"], scores,
                                                       headline_split="validation", pictures=pictures_in(staging)))
    neurons = (f" and {neurons_mask['pruned_this_run']} of {sum(neurons_before)} FFN neurons"
               if neurons_mask and neurons_mask["pruned_this_run"] else "")
    print(f"Removed {mask['pruned_this_run']} of {sum(heads_before)} heads{neurons}: parameters "
          f"{parameters_before / 1e6:.2f}M -> {count_parameters(model) / 1e6:.2f}M, val F1 "
          f"{before['overall']['f1']:.4f} -> {after['overall']['f1']:.4f}. Written to {output}.")
    return 0


if __name__ == "__main__":
    run_cli(main)
