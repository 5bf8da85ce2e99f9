"""`spikeforge perf`: what the accelerator would take per image on a board, predicted by the cycle model from the
integer reference's spikes, without simulating gateware.

For each test image the integer reference (sw/reference.py) says which neurons fire; the cycle model
(hw/cycle_model.py) turns that into the accelerator's cycle count, exactly as the RTL counts it. Latency adds the
pixel load (one pixel per cycle) and divides by the clock; the report also gives images per second, synaptic
operations per second and each layer's lane utilization. The heavy imports happen inside the functions, like the
command line's.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

__all__ = ["predict", "format_report"]


def _model_chunk(model, images, spikes) -> list:
    return [model.image(images[b], {p: s[:, b] for p, s in spikes.items()}) for b in range(len(images))]


def predict(net, images, labels, *, lanes: dict[int, int], clock_mhz: float, time_steps: int | None = None,
            jobs: int | None = None, progress: bool = True) -> dict:
    """The performance report of ``net`` on ``images``: a dict of plain values (``format_report`` prints it).

    ``lanes`` as ``spikeforge.hw.accelerator.choose_lanes`` returns them, or the board's LanePlan (its SPRAM
    membranes make half-rate units, which the model counts); ``jobs`` processes share the images (default: one
    per core).
    """
    from tqdm import tqdm

    from spikeforge.hw.cycle_model import CycleModel
    from spikeforge.sw import reference

    T = net.time_steps if time_steps is None else int(time_steps)
    pops = net.populations
    ref = reference.run(net, images, T)
    model = CycleModel(net, T, lanes=lanes)
    lif = [p for p, pop in enumerate(pops) if pop.kind == "lif"]
    n = len(images)
    jobs = max(1, min(n, jobs or len(os.sched_getaffinity(0))))
    chunks = [c for c in np.array_split(np.arange(n), max(1, min(n, jobs * 8))) if c.size]
    results = []
    bar = tqdm(total=n, desc="cycle model", unit="image", disable=not progress)
    with ProcessPoolExecutor(jobs) if jobs > 1 else _Inline() as pool:
        futures = [pool.submit(_model_chunk, model, images[c], {p: ref.spikes[p][:, c] for p in lif})
                   for c in chunks]
        for future in futures:
            part = future.result()
            results += part
            bar.update(len(part))
    bar.close()

    cycles = np.array([r.cycles for r in results], np.int64)
    load = int(net.input.size)  # one pixel per cycle into the input unit
    latency_cycles = cycles + load
    layers = []
    for p in range(1, len(pops)):
        updates = sum(r.updates[p] for r in results)
        ops = sum(r.synaptic_ops[p] for r in results)
        step_ends = np.array([r.step_ends[p] for r in results], np.float64)  # [images, T]
        durations = np.diff(np.concatenate([np.zeros((n, 1)), step_ends + 1], axis=1), axis=1).mean(axis=0)
        spikes = None if pops[p].kind != "lif" else float(ref.spikes[p].sum()) / n
        layers.append({
            "name": pops[p].name, "lanes": int(lanes[p]), "neurons": int(pops[p].size),
            "membrane": "SPRAM" if p in model.half_rate else "block RAM",
            "spikes_per_image": spikes,
            "word_updates_per_image": updates / n, "synaptic_ops_per_image": ops / n,
            "lane_utilization": ops / (lanes[p] * updates) if updates else 0.0,
            "step_cycles": [round(float(d), 1) for d in durations],
        })
    ops_per_image = sum(layer["synaptic_ops_per_image"] for layer in layers)
    mean_latency = float(latency_cycles.mean())
    return {
        "network": net.metadata.get("name") or "", "images": n, "time_steps": T,
        "accuracy": float((ref.prediction == np.asarray(labels)).mean()) if labels is not None else None,
        "clock_mhz": float(clock_mhz), "load_cycles": load,
        "pixel_list": "block RAM" if not getattr(lanes, "pixel_list_spram", True) else "SPRAM",
        "cycles": {"mean": float(cycles.mean()), "min": int(cycles.min()), "max": int(cycles.max())},
        "latency_cycles_mean": mean_latency,
        "latency_us": {"mean": mean_latency / clock_mhz, "max": float(latency_cycles.max()) / clock_mhz},
        "images_per_s": clock_mhz * 1e6 / mean_latency,
        "synaptic_ops_per_image": ops_per_image,
        "synaptic_ops_per_s": ops_per_image * clock_mhz * 1e6 / mean_latency,
        "layers": layers,
        "per_image_cycles": cycles.tolist(),
    }


class _Inline:
    """The ProcessPoolExecutor interface, run in this process (one job)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        result = fn(*args)

        class _Done:
            @staticmethod
            def result():
                return result
        return _Done()


def format_report(report: dict, board: str) -> str:
    """The report as the command line prints it."""
    lines = [f"{report['images']} images, T={report['time_steps']}, {board} at {report['clock_mhz']:g} MHz"
             + (f", integer accuracy {report['accuracy'] * 100:.2f}%" if report["accuracy"] is not None else "")]
    c = report["cycles"]
    lines.append(f"cycles per image (after the last pixel): mean {c['mean']:.0f}, min {c['min']}, max {c['max']}; "
                 f"+ {report['load_cycles']} to load the pixels")
    lines.append(f"latency per image: mean {report['latency_us']['mean']:.1f} us, max "
                 f"{report['latency_us']['max']:.1f} us; {report['images_per_s']:,.0f} images/s; "
                 f"{report['synaptic_ops_per_s'] / 1e6:,.1f} M synaptic ops/s")
    lines.append(f"{'layer':<12} {'lanes':>5} {'spikes/img':>10} {'word upd/img':>12} {'syn ops/img':>12} "
                 f"{'lane use':>8}  cycles per step")
    for layer in report["layers"]:
        spikes = "-" if layer["spikes_per_image"] is None else f"{layer['spikes_per_image']:.0f}"
        steps = " ".join(f"{d:.0f}" for d in layer["step_cycles"])
        lines.append(f"{layer['name']:<12} {layer['lanes']:>5} {spikes:>10} {layer['word_updates_per_image']:>12.0f} "
                     f"{layer['synaptic_ops_per_image']:>12.0f} {layer['lane_utilization'] * 100:>7.1f}%  {steps}")
    in_spram = [layer["name"] for layer in report["layers"] if layer.get("membrane") == "SPRAM"]
    lines.append(f"membranes in SPRAM (half-rate units): {', '.join(in_spram) or 'none'}; pixel list in "
                 f"{report.get('pixel_list', 'SPRAM')}")
    return "\n".join(lines)
