"""Pictures of the pipeline's results: training curves, the pruning map, the per-type comparison.

    python plots.py --run artifacts/student_10L            # training_curves.png (also while it trains)
    python plots.py --run artifacts/student_10L_pruned     # heads_pruned.png

Stages 1 and 3 draw `training_curves.png` when they end, stage 2 draws `heads_pruned.png`, and
`evaluate.py --plot FILE.png` draws the comparison. Each picture is made in two steps: a pure
function reads the files into the numbers to draw (`curves_data`, `pruning_data`,
`comparison_data`; the tests check these), then a `draw_*` function draws them with matplotlib's
Agg backend (no display), with colour maps that read in greyscale (cividis). The same input
gives the same PNG.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from utils import PipelineError, publishing, run_cli  # noqa: E402

CURVES_FILE = "training_curves.png"
PRUNING_FILE = "heads_pruned.png"
LOG_NAME, SUMMARY_NAME = "training_log.jsonl", "training_summary.json"
HEADS_MASK, FFN_MASK = "heads_pruned_mask.json", "ffn_pruned_mask.json"
NOT_TERMS = {"epoch", "step", "lr", "samples_per_s"}
DPI = 100
# PNG metadata without the matplotlib version: the same numbers give the same file
PNG_METADATA = {"Software": None}


# ---------------------------------------------------------------------------
# Training curves

@dataclass
class Curves:
    """What training_curves.png shows."""
    terms: dict[str, list[tuple[int, float]]]     # loss term -> (optimizer step, value)
    learning_rate: list[tuple[int, float]]
    val_f1: list[tuple[int, float]]                # (epoch, val F1); epoch 0 = before training
    best_epoch: int | None
    title: str
    notes: list[str] = field(default_factory=list)


def read_log(path: Path) -> tuple[list[dict], list[str]]:
    """The records of a training_log.jsonl, and notes on what could not be read (never its text)."""
    if not path.is_file():
        return [], [f"no {path.name} in the run folder"]
    lines = path.read_bytes().split(b"\n")
    records, notes = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            last = all(not rest.strip() for rest in lines[number:])
            notes.append(f"{path.name}: line {number} is incomplete (the run is writing it, or was stopped): left out"
                         if last else f"{path.name}: line {number} is not valid JSON: left out")
    return records, notes


def curves_data(run_dir: str | Path) -> Curves:
    """The curves of a run folder, from its log, and from its summary once the run has ended."""
    run_dir = Path(run_dir)
    records, notes = read_log(run_dir / LOG_NAME)
    summary = None
    if (run_dir / SUMMARY_NAME).is_file():
        try:
            summary = json.loads((run_dir / SUMMARY_NAME).read_text())
        except ValueError:
            notes.append(f"{SUMMARY_NAME} cannot be read: validation scores come from the log")
    terms: dict[str, list[tuple[int, float]]] = {}
    learning_rate, val_from_log = [], []
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if "val_f1" in record:
            val_from_log.append((record.get("epoch", 0), record["val_f1"]))
            continue
        if "lr" in record:
            learning_rate.append((step, record["lr"]))
        for name, value in record.items():
            if name not in NOT_TERMS and isinstance(value, (int, float)) and math.isfinite(value):
                terms.setdefault(name, []).append((step, value))
    if summary and summary.get("history"):
        val_f1 = [(h["epoch"], h["val"]["overall"]["f1"]) for h in summary["history"]]
        best = summary.get("best_epoch")
    else:
        val_f1 = sorted(set(val_from_log))
        best = max(val_f1, key=lambda p: (p[1], -p[0]))[0] if val_f1 else None
        if records and not summary:
            notes.append("the run has not finished: what its log holds so far")
    stage = summary.get("stage") if summary else None
    title = run_dir.name + (f" ({stage})" if stage else "")
    return Curves(terms, learning_rate, val_f1, best, title, notes)


def draw_curves(curves: Curves, path: str | Path) -> Path:
    """training_curves.png: loss terms and learning rate against optimizer steps, val F1 per epoch."""
    fig, (losses, rate, f1) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=DPI)
    fig.suptitle(f"Training curves: {curves.title}")
    if curves.terms:
        styles = _line_styles(len(curves.terms))
        for (name, points), (colour, dash) in zip(sorted(curves.terms.items(), key=_term_order), styles):
            losses.plot(*zip(*points), color=colour, linestyle=dash, linewidth=1.4, label=name)
        if all(v > 0 for points in curves.terms.values() for _, v in points):
            losses.set_yscale("log")
        losses.legend(fontsize=8, ncol=2)
    else:
        _empty(losses, "no loss logged yet")
    losses.set(title="Loss terms (mean per window since the previous log line)", xlabel="optimizer step",
               ylabel="loss")
    if curves.learning_rate:
        rate.plot(*zip(*curves.learning_rate), color="#21478a", linewidth=1.4)
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        _empty(rate, "no learning rate logged yet")
    rate.set(title="Learning rate", xlabel="optimizer step", ylabel="learning rate")
    if curves.val_f1:
        epochs, values = zip(*curves.val_f1)
        f1.plot(epochs, values, color="#21478a", marker="o", linewidth=1.4, label="val F1")
        best = dict(curves.val_f1).get(curves.best_epoch)
        if best is not None:
            f1.plot([curves.best_epoch], [best], linestyle="none", marker="*", markersize=16, color="#e8a33b",
                    markeredgecolor="black", label=f"best: epoch {curves.best_epoch}, F1 {best:.4f}")
        f1.set_xticks(range(min(epochs), max(epochs) + 1))
        f1.legend(fontsize=8, loc="lower right")
    else:
        _empty(f1, "no validation score yet")
    f1.set(title="Validation F1 (seqeval, strict IOB2)", xlabel="epoch (0 = before training)", ylabel="F1")
    for axes in (losses, rate, f1):
        axes.grid(alpha=0.3)
    return _save(fig, path, curves.notes)


def _term_order(item):
    name = item[0]
    return (name != "loss", name.endswith("_unlabeled"), name)


# ---------------------------------------------------------------------------
# The pruning map

@dataclass
class PruningRound:
    importance: list[list[float | None]]       # (layers, heads); None = removed in an earlier round
    removed: set[tuple[int, int]]              # (layer, head) removed in this round


@dataclass
class PruningMap:
    rounds: list[PruningRound]
    neurons: list[tuple[int, int]] | None      # per layer (kept, removed), when FFN neurons were pruned
    title: str


def pruning_data(model_dir: str | Path, name: str | None = None) -> PruningMap:
    """The pruning map of a stage-2 folder, from heads_pruned_mask.json (and ffn_pruned_mask.json);
    `name` titles it (default: the folder's name)."""
    model_dir = Path(model_dir)
    heads = json.loads((model_dir / HEADS_MASK).read_text())
    rounds = [PruningRound(importance, {(int(layer), head) for layer, chosen in removed.items() for head in chosen})
              for importance, removed in zip(heads["importance"], heads["pruned_per_step"])]
    neurons = None
    if (model_dir / FFN_MASK).is_file():
        ffn = json.loads((model_dir / FFN_MASK).read_text())
        neurons = [(after, ffn["intermediate_size"] - after) for after in ffn["neurons_after"]]
    rate = heads.get("rate")
    title = (f"{name or model_dir.name}: {heads['pruned_total']} of {heads['total_heads']} heads removed"
             + (f" (rate {rate})" if rate is not None else ""))
    return PruningMap(rounds, neurons, title)


def draw_pruning(data: PruningMap, path: str | Path) -> Path:
    """heads_pruned.png: layers x heads coloured by importance, one panel per round, removed heads
    crossed; a bar per layer of FFN neurons kept and removed when neurons were pruned."""
    layers = len(data.rounds[0].importance) if data.rounds else 0
    heads = len(data.rounds[0].importance[0]) if layers else 0
    panels = len(data.rounds) + (data.neurons is not None)
    width = max(5.5, 0.42 * heads + 2.2)
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, max(4.0, 0.38 * layers + 2.6)), dpi=DPI,
                             squeeze=False)
    fig.suptitle(f"Attention-head importance and pruning\n{data.title}")
    colours = plt.get_cmap("cividis").with_extremes(bad="#d9d9d9")  # grey: a head removed earlier
    for number, (round_, ax) in enumerate(zip(data.rounds, axes[0]), 1):
        grid = [[math.nan if v is None else v for v in row] for row in round_.importance]
        image = ax.imshow(grid, cmap=colours, aspect="auto", interpolation="nearest")
        for layer, head in sorted(round_.removed):
            ax.plot(head, layer, marker="x", markersize=9, markeredgewidth=2.4, color="white")
            ax.plot(head, layer, marker="x", markersize=9, markeredgewidth=1.0, color="black")
        for layer, row in enumerate(grid):
            for head, value in enumerate(row):
                if math.isnan(value):
                    ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, hatch="///",
                                               edgecolor="#7f7f7f", linewidth=0))
        ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)], fontsize=8)
        ax.set_yticks(range(layers), [str(l + 1) for l in range(layers)], fontsize=8)
        ax.set(xlabel="head", ylabel="layer",
               title=f"Round {number} of {len(data.rounds)}: {len(round_.removed)} heads removed (x)")
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03).set_label("importance (normalised per layer)")
    if data.neurons is not None:
        ax = axes[0][-1]
        kept, removed = zip(*data.neurons)
        rows = range(len(kept))
        ax.barh(rows, kept, color="#21478a", label="kept")
        ax.barh(rows, removed, left=kept, color="#e8e1a8", hatch="//", edgecolor="#7f7f7f", label="removed")
        ax.set_yticks(list(rows), [str(l + 1) for l in rows], fontsize=8)
        ax.invert_yaxis()  # layer 1 at the top, as in the head maps
        ax.set_xlim(0, 1.3 * max(k + r for k, r in data.neurons))  # room for the legend beside the bars
        ax.set(xlabel="FFN neurons", ylabel="layer", title="Feed-forward neurons per layer")
        ax.legend(fontsize=8, loc="center right")
    notes = ["hatched grey: removed in an earlier round or an earlier run"] if any(
        v is None for r in data.rounds for row in r.importance for v in row) else []
    return _save(fig, path, notes)


# ---------------------------------------------------------------------------
# The comparison (evaluate.py --plot)

@dataclass
class Comparison:
    types: list[str]                            # entity types, then "overall"
    bars: list[tuple[str, list[float | None]]]  # (legend label, F1 per type; None = type absent)


def comparison_data(rows: list[dict]) -> Comparison:
    """F1 per entity type for each evaluated model, with size and speed in its label."""
    types = sorted({t for row in rows for t in row["per_type"]}) + ["overall"]
    bars = []
    for row in rows:
        label = (f"{Path(row['model']).name or row['model']} ({row.get('precision', 'fp32')}): "
                 f"{row['parameters'] / 1e6:.1f}M parameters, {row['words_per_s']:.0f} words/s")
        scores = {**{t: s["f1"] for t, s in row["per_type"].items()}, "overall": row["overall"]["f1"]}
        bars.append((label, [scores.get(t) for t in types]))
    return Comparison(types, bars)


def draw_comparison(data: Comparison, path: str | Path, title: str = "") -> Path:
    """Grouped bars: F1 per entity type, one bar per model."""
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(data.types) * max(1, len(data.bars)) ** 0.5 + 3), 5),
                           dpi=DPI)
    width = 0.8 / max(1, len(data.bars))
    colours = plt.get_cmap("cividis")
    for number, (label, values) in enumerate(data.bars):
        xs = [t + (number - (len(data.bars) - 1) / 2) * width for t in range(len(data.types))]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        if shown:
            ax.bar(*zip(*shown), width=width * 0.95, label=label,
                   color=colours(number / max(1, len(data.bars) - 1) * 0.85), edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(data.types)), data.types)
    ax.set(ylim=(0, 1.0), ylabel="F1 (seqeval, strict IOB2)", xlabel="entity type",
           title=title or "F1 per entity type")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    return _save(fig, path, [])


# ---------------------------------------------------------------------------

def _line_styles(count: int) -> list[tuple]:
    """Colours from cividis plus dashes, so that lines stay apart in greyscale too."""
    dashes = ["-", "--", "-.", ":"]
    colours = plt.get_cmap("cividis")
    return [(colours(i / max(1, count - 1) * 0.9), dashes[i % len(dashes)]) for i in range(count)]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")


def _save(fig, path: str | Path, notes: list[str]) -> Path:
    if notes:
        fig.text(0.01, 0.01, "Note: " + "; ".join(notes), fontsize=8, color="#8a2d00", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    path = Path(path)
    with publishing(path) as staging:  # never a half-written picture
        fig.savefig(staging, format="png", dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def draw_run(run_dir: str | Path) -> list[Path]:
    """The pictures a run folder can give: its training curves, its pruning map."""
    run_dir = Path(run_dir)
    drawn = []
    if (run_dir / HEADS_MASK).is_file():
        drawn.append(draw_pruning(pruning_data(run_dir), run_dir / PRUNING_FILE))
    if (run_dir / LOG_NAME).is_file() or (run_dir / SUMMARY_NAME).is_file() or not drawn:
        drawn.append(draw_curves(curves_data(run_dir), run_dir / CURVES_FILE))
    return drawn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder of stage 1, 2 or 3 (finished or not)")
    args = parser.parse_args(argv)
    if not Path(args.run).is_dir():
        raise PipelineError(f"--run {args.run}: no such folder.")
    for path in draw_run(args.run):
        print(f"Written {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
