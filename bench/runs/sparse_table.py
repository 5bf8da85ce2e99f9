"""The table of docs/training.md's "Fewer spikes" section from finished runs' summary.json files.

    .venv/bin/python bench/runs/sparse_table.py bench/runs/sparse/*.json    # the archived summaries
    .venv/bin/python bench/runs/sparse_table.py build/RUN/summary.json ...  # or fresh runs

One markdown row per run: penalty weights, epochs, float / QAT / deployed accuracy, the deployed network's spikes
per test image per layer, its spikes on an all-zero image, the hardware cost proxy and the wall time. The cost
proxy of a chain c{C1}...-c{C2}...-d10 (issue 26) is conv1 spikes x 2.25 x ceil(C2 / 16) + conv2 spikes +
nonzero pixels x 2.25 x 10 per image (smaller is better): about the accelerator's cycles per image, where each
conv1 spike costs ~2.25 cycles per 16 conv2 channels, each conv2 spike ~1 cycle in the readout and each nonzero
pixel feeds the first layer. The nonzero pixels are counted on the run's test images (MNIST: 151.1 per image).
"""

from __future__ import annotations

import json
import math
import sys

from spikeforge.sw.data import load_dataset
from spikeforge.sw.model import ARCHITECTURES, Architecture


def cost_proxy(summary: dict, nonzero_pixels: float) -> float:
    arch = ARCHITECTURES.get(summary["config"]["arch"]) or Architecture.parse(summary["config"]["arch"])
    c2 = arch.layers[1].out
    spikes = summary["deployed_spikes_per_image"]
    return spikes["conv1"] * 2.25 * math.ceil(c2 / 16) + spikes["conv2"] + nonzero_pixels * 2.25 * 10


def row(path: str, pixels: dict) -> str:
    s = json.loads(open(path).read())
    c = s["config"]
    key = (c["dataset"], s["deployed_images"])
    if key not in pixels:
        x, _ = load_dataset(c["dataset"], "test", c.get("data_dir"))
        pixels[key] = float((x[:s["deployed_images"]] > 0).sum()) / s["deployed_images"]
    spikes, blank = s["deployed_spikes_per_image"], s["blank_spikes"]
    wall = s["seconds"]["wall_s_this_call"]
    pct = lambda a: "–" if a is None else f"{100 * a:.2f}%"  # noqa: E731
    return (f"| `{s.get('run', path)}` | {c['arch']} | {c.get('activity_penalty', 0):g} | {c.get('silent_blank', 0):g} | "
            f"{c['epochs_float']} + {c['epochs_qat']} | {pct(s['float_accuracy'])} | {pct(s['qat_accuracy'])} | "
            f"**{pct(s['deployed_accuracy'])}** | {spikes['conv1']:,.0f} / {spikes['conv2']:,.0f} | "
            f"{blank['conv1']:,} / {blank['conv2']:,} | {cost_proxy(s, pixels[key]):,.0f} | {wall:.0f} s |")


if __name__ == "__main__":
    print("| run | arch | activity penalty | silent blank | epochs | float | QAT | deployed | spikes / test image "
          "(conv1 / conv2) | spikes on a blank image | cost proxy | wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cache: dict = {}
    for p in sys.argv[1:]:
        print(row(p, cache))
