"""Gradient flow at initialization versus surrogate width: the remedy of Ledinauskas et al. (2020) as a tool.

A deep SNN trained with BPTT is implicitly recurrent, so its gradients explode or vanish with depth unless the
surrogate's width is tuned. :func:`measure` runs one forward + backward per width on the same weights and data and
records every weight layer's gradient norm and, per time step, every spiking neuron's input-current gradient norm;
:func:`auto_width` picks the width whose first-to-last layer gradient ratio is closest to 1.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .neuron import Surrogate, make_surrogate
from .resnet import RESNETS, lif_neuron

__all__ = ["GradRow", "NeuronRow", "GradFlowTable", "PeakNormalized", "measure", "auto_width", "plot", "main",
           "NORMALIZATIONS"]

NORMALIZATIONS = ("area", "peak")


class PeakNormalized(Surrogate):
    """A surrogate rescaled so that its derivative peaks at 1 (at the threshold) whatever its width.

    spikeforge's surrogates have unit area (their peak is ~1/width); with a fixed peak, as in much of the
    literature, a wider surrogate passes MORE total gradient instead of the same amount spread thinner.
    """

    def __init__(self, base: Surrogate):
        super().__init__(base.width)
        self.base = base
        self.name = f"{base.name}/peak"
        self._peak = float(base.derivative(torch.zeros(())))

    def primitive(self, x):
        return self.base.primitive(x) / self._peak

    def derivative(self, x):
        return self.base.derivative(x) / self._peak

    def __repr__(self):
        return f"PeakNormalized({self.base!r})"


def _surrogate(kind: str, width: float, normalize: str) -> Surrogate:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
    base = make_surrogate(kind, width)
    return PeakNormalized(base) if normalize == "peak" else base


@dataclass
class GradRow:
    """One weight layer at one surrogate width: ``depth`` is its place in execution order (0 = first)."""

    width: float
    depth: int
    layer: str
    weight_grad: float


@dataclass
class NeuronRow:
    """One spiking neuron population at one width: the L2 norm of dLoss/d(input current) at every time step."""

    width: float
    depth: int
    neuron: str
    input_grad: list[float]

    @property
    def total(self) -> float:
        return math.sqrt(sum(g * g for g in self.input_grad))


@dataclass
class GradFlowTable:
    """The result of :func:`measure`: one :class:`GradRow` per weight layer and width, one :class:`NeuronRow` per
    spiking population and width."""

    widths: list[float]
    surrogate: str
    rows: list[GradRow] = field(default_factory=list)
    neuron_rows: list[NeuronRow] = field(default_factory=list)
    seconds: float = 0.0
    setup: str = ""

    def layer_norms(self, width: float) -> list[float]:
        return [r.weight_grad for r in sorted(self.rows, key=lambda r: r.depth) if r.width == width]

    def ratios(self) -> dict[float, float]:
        """First-layer over last-layer weight-gradient norm per width (>> 1 explodes, << 1 vanishes)."""
        out = {}
        for w in self.widths:
            norms = self.layer_norms(w)
            out[w] = norms[0] / norms[-1] if norms[-1] > 0 else math.inf
        return out

    def best_width(self) -> float:
        """The width whose ratio is closest to 1 in log distance (a zero or infinite ratio is farthest)."""
        def distance(ratio):
            return abs(math.log(ratio)) if 0 < ratio < math.inf else math.inf

        ratios = self.ratios()
        return min(self.widths, key=lambda w: distance(ratios[w]))

    def format(self, every: int = 1) -> str:
        """A text table: one line per weight layer (every ``every``-th, plus the last), one column per width."""
        names = [r.layer for r in sorted(self.rows, key=lambda r: r.depth) if r.width == self.widths[0]]
        keep = [i for i in range(len(names)) if i % every == 0 or i == len(names) - 1]
        columns = {w: self.layer_norms(w) for w in self.widths}
        head = f"{'depth':>5} {'layer':<28}" + "".join(f" {'w=' + format(w, 'g'):>10}" for w in self.widths)
        lines = [head]
        for i in keep:
            lines.append(f"{i:>5} {names[i]:<28}" + "".join(f" {columns[w][i]:>10.3g}" for w in self.widths))
        ratios = self.ratios()
        lines.append(f"{'':>5} {'ratio first/last':<28}" + "".join(f" {ratios[w]:>10.3g}" for w in self.widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        ratios = self.ratios()
        first = {w: self.layer_norms(w)[0] for w in self.widths}
        last = {w: self.layer_norms(w)[-1] for w in self.widths}
        lines = ["| surrogate width | first-layer grad norm | last-layer grad norm | ratio first/last |",
                 "|---:|---:|---:|---:|"]
        for w in self.widths:
            lines.append(f"| {w:g} | {first[w]:.3g} | {last[w]:.3g} | {ratios[w]:.3g} |")
        return "\n".join(lines)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None]


def _neurons(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "surrogate", None), Surrogate)]


def measure(model_factory: Callable[[], nn.Module], widths: Sequence[float], *, time_steps: int, batch: int,
            input_shape: Sequence[int], surrogate: str = "arctan", normalize: str = "area", data=None,
            targets=None, classes: int | None = None, seed: int = 0, device=None) -> GradFlowTable:
    """Gradient norms at initialization, for every surrogate width, on one model and one batch.

    ``model_factory()`` returns a spiking model (SpikingResNet, SpikingNet, ...) whose neurons have a
    ``surrogate`` attribute (sw/neuron.py's LIF) and whose ``forward(images)`` returns logits; its ``time_steps``
    attribute, if any, is set to ``time_steps``. It is built once (seeded): every width sees the same weights, the
    same ``data`` (default uniform random pixels/255 [batch, *input_shape]) and ``targets`` (default random
    classes), and the same forward pass (the Heaviside forward does not depend on the width), in training mode
    (BN uses the batch statistics). Only each neuron's surrogate changes: ``surrogate`` kind with the width, unit
    area (``normalize="area"``, sw/neuron.py's convention) or unit peak (``"peak"``). Loss: cross-entropy.
    ``device`` (default: the CPU) is where the model and the batch go; data and targets are drawn on the CPU first,
    so a seed gives the same batch on every device.
    """
    widths = [float(w) for w in widths]
    if not widths or any(not (w > 0 and math.isfinite(w)) for w in widths):
        raise ValueError(f"widths must be positive numbers, not {widths!r}")
    torch.manual_seed(seed)
    device = torch.device(device or "cpu")
    model = model_factory().to(device)
    if hasattr(model, "time_steps"):
        model.time_steps = int(time_steps)
    model.train()
    layers, neurons = _weight_layers(model), _neurons(model)
    if not neurons:
        raise ValueError("the model has no spiking neurons with a surrogate (the ANN twin has nothing to measure)")
    generator = torch.Generator().manual_seed(seed)
    if data is None:
        data = torch.rand(batch, *input_shape, generator=generator)
    data = torch.as_tensor(data, dtype=torch.float32).to(device)
    order: list[str] = []
    currents: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: order.append(name)) for n, m in layers]

    def keep_current(mod, inputs, name):
        current = inputs[0]
        if current.requires_grad:
            current.retain_grad()
        currents[name] = current

    hooks += [m.register_forward_pre_hook(lambda mod, inp, name=n: keep_current(mod, inp, name)) for n, m in neurons]
    table = GradFlowTable(widths=widths, surrogate=f"{surrogate} ({normalize})",
                          setup=f"T={time_steps}, batch={data.shape[0]}, input={list(data.shape[1:])}")
    start = time.perf_counter()
    try:
        for width in widths:
            for _, neuron in neurons:
                neuron.surrogate = _surrogate(surrogate, width, normalize)
            model.zero_grad(set_to_none=True)
            order.clear()
            currents.clear()
            logits = model(data)
            if targets is None:
                targets = torch.randint(0, classes or logits.shape[-1], (logits.shape[0],), generator=generator)
            loss = nn.functional.cross_entropy(logits, torch.as_tensor(targets).to(logits.device))
            loss.backward()
            modules = dict(layers)
            seen = list(dict.fromkeys(order))  # execution order, each layer once
            for depth, name in enumerate(seen):
                grad = modules[name].weight.grad
                table.rows.append(GradRow(width, depth, name, 0.0 if grad is None else float(grad.norm())))
            for depth, (name, current) in enumerate(currents.items()):
                grad = current.grad
                steps = [0.0] * current.shape[0] if grad is None else [float(g.norm()) for g in grad]
                table.neuron_rows.append(NeuronRow(width, depth, name, steps))
            del logits, loss
            currents.clear()
    finally:
        for h in hooks:
            h.remove()
    table.seconds = time.perf_counter() - start
    return table


def auto_width(model_factory: Callable[[], nn.Module], widths: Sequence[float], **kwargs) -> float:
    """The width (one of ``widths``) whose first-to-last gradient ratio is closest to 1; kwargs as :func:`measure`."""
    return measure(model_factory, widths, **kwargs).best_width()


def plot(table: GradFlowTable, path, title: str = "") -> None:
    """A PNG: weight-gradient norm vs depth (left) and neuron input-gradient norm vs depth (right), log scale,
    one curve per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ratios = table.ratios()
    for w in table.widths:
        norms = table.layer_norms(w)
        left.semilogy(range(len(norms)), norms, marker=".", label=f"width {w:g} (ratio {ratios[w]:.2g})")
        neurons = [r.total for r in table.neuron_rows if r.width == w]
        right.semilogy(range(len(neurons)), neurons, marker=".", label=f"width {w:g}")
    left.set(xlabel="weight layer (execution order)", ylabel="||dL/dW||", title="weight gradients")
    right.set(xlabel="spiking population (execution order)", ylabel="||dL/dI|| over all steps",
              title="neuron input-current gradients")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title or f"gradient flow at initialization, surrogate {table.surrogate}, {table.setup}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``spikeforge gradflow``."""
    p = argparse.ArgumentParser(prog="spikeforge gradflow",
                                description="Gradient norms vs depth at initialization for several surrogate widths.")
    p.add_argument("--model", default="resnet50", choices=sorted(RESNETS))
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--widths", default="0.1,0.3,1,3,10", help="comma-separated surrogate widths")
    p.add_argument("--surrogate", default="arctan")
    p.add_argument("--normalize", default="area", choices=NORMALIZATIONS,
                   help="surrogate convention: unit area (sw/neuron.py) or unit peak")
    p.add_argument("--input", default=None, help="C,H,W (default 1,28,28 for resnet8/10, else 3,32,32)")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--bn", default="shared")
    p.add_argument("--model-width", type=float, default=1.0, help="channel-width multiplier of the model")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--png", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when torch sees a GPU, else the CPU")
    return p


def main(argv=None) -> GradFlowTable:
    """``spikeforge gradflow --model resnet50 --time-steps 10 --batch 2 --widths 0.1,0.3,1,3,10 --png FILE``."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("spikeforge gradflow: --device cuda was asked for but torch sees no CUDA device; "
                         "use --device cpu or auto")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    try:
        widths = [float(w) for w in args.widths.split(",")]
        shape = [int(n) for n in args.input.split(",")] if args.input else \
            ([1, 28, 28] if args.model in ("resnet6", "resnet8", "resnet10") else [3, 32, 32])
    except ValueError:
        raise SystemExit(f"spikeforge gradflow: cannot read --widths {args.widths!r} or --input {args.input!r}; "
                         "write e.g. --widths 0.1,1,10 --input 3,32,32") from None

    def factory():
        return RESNETS[args.model](width=args.model_width, in_channels=shape[0], num_classes=args.classes,
                                   stem=args.stem, bn=args.bn, time_steps=args.time_steps,
                                   neuron=lif_neuron(args.surrogate, widths[0]))

    table = measure(factory, widths, time_steps=args.time_steps, batch=args.batch, input_shape=shape,
                    surrogate=args.surrogate, normalize=args.normalize, seed=args.seed, device=device)
    layers = len(table.layer_norms(widths[0]))
    print(table.format(every=max(1, layers // 20)))
    print(f"best width (ratio closest to 1): {table.best_width():g}; {args.model}, {table.setup}, "
          f"{table.seconds:.0f} s on {torch.cuda.get_device_name(0) if device == 'cuda' else 'the CPU'}")
    if args.png:
        plot(table, args.png, title=f"{args.model}: gradient flow at init, surrogate {table.surrogate}, "
                                    f"{table.setup}")
        print(f"wrote {args.png}")
    return table


if __name__ == "__main__":
    main()
