"""The paper's central claim measured on accuracy: a surrogate width tuned for gradient flow trains better than a
badly chosen one on the same budget. Writes the table between the markers of docs/resnet.md and
docs/surrogate_width.png from the runs' summaries (bench/runs/sg-w*.json, archived from ``build/sg-w*/``).

    .venv/bin/python -m bench.surrogate_width            # table + plot from the archived summaries
    .venv/bin/python -m bench.surrogate_width --archive  # first copy build/sg-w*/summary.json into bench/runs/

The runs (one each, seed 0, 1 thread beside other jobs on the 2-core machine; the command is in each summary's
config and in docs/resnet.md): ResNet-8 x0.5 with a stride-2 stem on Fashion-MNIST, T = 10, 20,000 training
images, 3 float epochs, no QAT. The gradient ratio is measured here, the way ``--surrogate-width auto`` measures it
(sw.gradflow on the float model at initialization, 8 training images).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "bench" / "runs"
DOC = ROOT / "docs" / "resnet.md"
BEGIN, END = "<!-- surrogate-width:begin -->", "<!-- surrogate-width:end -->"


def load_runs() -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("sg-w*.json"))]
    return sorted(runs, key=lambda r: r["surrogate_width"])


def gradient_ratios(config: dict, widths) -> dict[float, float]:
    """First-layer / last-layer gradient norm per width, as ``--surrogate-width auto`` measures it."""
    import torch

    from spikeforge.sw.config import TrainConfig
    from spikeforge.sw.data import load_dataset
    from spikeforge.sw.gradflow import measure
    from spikeforge.sw.models import build_model
    from spikeforge.sw.model import PIXEL_MAX

    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known and k != "surrogate_width"})
    images, _ = load_dataset(cfg.dataset, "train")
    data = torch.as_tensor(images[:8]).float() / PIXEL_MAX
    table = measure(lambda: build_model(cfg, False, tuple(data.shape[1:]), 10, surrogate_width=1.0, lif="fused"),
                    list(widths), time_steps=cfg.time_steps, batch=len(data), input_shape=tuple(data.shape[1:]),
                    surrogate=cfg.surrogate, data=data, classes=10, seed=cfg.seed)
    return table.ratios()


def table(runs: list[dict], ratios: dict[float, float]) -> str:
    auto = [r for r in runs if r["config"]["surrogate_width"] == "auto"]
    lines = ["| surrogate width | chosen by | gradient ratio first/last at init | test accuracy after epoch 1 / 2 / 3 "
             "| float | deployed integer |", "|---:|---|---:|---|---:|---:|"]
    for run in runs:
        width = run["surrogate_width"]
        ratio = ratios[width]
        verdict = " (explodes)" if ratio > 30 else " (vanishes)" if ratio < 1 / 30 else ""
        curve = " / ".join(f"{100 * h['test_acc']:.2f}" for h in run["history"] if h["phase"] == "float")
        chosen = "`auto`" if run in auto else "hand"
        lines.append(f"| {width:g} | {chosen} | {ratio:.3g}{verdict} | {curve} | {100 * run['float_accuracy']:.2f}% "
                     f"| {100 * run['deployed_accuracy']:.2f}% |")
    return "\n".join(lines)


def plot(runs: list[dict], ratios: dict[float, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        width = run["surrogate_width"]
        epochs = [h["epoch"] for h in run["history"] if h["phase"] == "float"]
        accs = [100 * h["test_acc"] for h in run["history"] if h["phase"] == "float"]
        label = f"w={width:g}" + (" (auto)" if run["config"]["surrogate_width"] == "auto" else "")
        left.plot(epochs, accs, marker="o", label=label)
    left.set_xlabel("epoch (20k images)")
    left.set_ylabel("test accuracy (%)")
    left.set_title("learning curves, same budget")
    left.legend(fontsize=8)
    widths = [r["surrogate_width"] for r in runs]
    right.bar([f"{w:g}" for w in widths], [100 * r["float_accuracy"] for r in runs], color="tab:blue")
    right.set_xlabel("surrogate width (unit area)")
    right.set_ylabel("test accuracy after 3 epochs (%)", color="tab:blue")
    twin = right.twinx()
    twin.plot([f"{w:g}" for w in widths], [ratios[w] for w in widths], color="tab:red", marker="s")
    twin.set_yscale("log")
    twin.axhline(1.0, color="tab:red", linestyle=":")
    twin.set_ylabel("gradient ratio first/last at init", color="tab:red")
    right.set_title("accuracy and gradient flow per width")
    fig.suptitle("Spiking ResNet-8 x0.5, Fashion-MNIST, T=10: the tuned surrogate width trains best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", action="store_true", help="copy build/sg-w*/summary.json to bench/runs first")
    args = parser.parse_args(argv)
    if args.archive:
        for summary in sorted((ROOT / "build").glob("sg-w*/summary.json")):
            shutil.copy(summary, RUNS / f"{summary.parent.name}.json")
    runs = load_runs()
    if not runs:
        raise SystemExit("no runs in bench/runs/sg-w*.json; train them (docs/resnet.md) and use --archive")
    ratios = gradient_ratios(runs[0]["config"], [r["surrogate_width"] for r in runs])
    text = table(runs, ratios)
    print(text)
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    plot(runs, ratios, ROOT / "docs" / "surrogate_width.png")
    print(f"wrote the table into {DOC} and docs/surrogate_width.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
