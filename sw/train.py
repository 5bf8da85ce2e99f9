"""Training schedule: float phase -> QAT fine-tune (deploy-aware) -> export -> deployed integer evaluation.

``train(TrainConfig(...))`` is the whole pipeline; every epoch leaves a resumable state in the out dir, and the
end writes checkpoint.pt (config + QAT weights), network.sfnet and summary.json (float / QAT / deployed accuracy
side by side, wall times).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from spikeforge import netimage

from .data import load_dataset
from .export import deployed_accuracy, export_network, membrane_statistics
from .model import PIXEL_MAX, SpikingNet, spiking_net
from .neuron import SURROGATES

__all__ = ["TrainConfig", "PRESETS", "preset", "train", "evaluate", "evaluate_checkpoint", "main"]


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are the default schedule (``make train``)."""

    dataset: str = "mnist"
    data_dir: str | None = None           # a folder of MNIST-style IDX files instead of the packaged dataset
    arch: str = "demo"                    # a name in model.ARCHITECTURES or a compact string (c8s2w8-c16s2w4-d10w4)
    time_steps: int = 10
    epochs_float: int = 16
    epochs_qat: int = 4
    batch_size: int = 128
    lr: float = 3e-3                      # peak LR of the float phase
    lr_qat: float = 5e-4                  # start LR of the QAT phase (cosine to 0)
    weight_decay: float = 1e-4
    optimizer: str = "adamw"              # "adamw" | "sgd"
    schedule: str = "onecycle"            # float phase: "onecycle" | "cosine"
    surrogate: str = "arctan"             # one of neuron.SURROGATES
    surrogate_width: float = 0.5
    leak_shift: int | None = None         # None = integrate-and-fire
    augment_shift: int = 2                # random translation of +-n pixels (zero fill = pixel 0), train only
    deploy_aware: bool = True             # QAT with the exporter's rounded thresholds/biases in the loop
    bn_calibration_batches: int = 50      # BN statistics re-measured on the quantized weights before freezing
    seed: int = 0
    out: str = "build/train"
    train_subset: int | None = None       # first N shuffled train images only (demo, tests)
    test_subset: int | None = None        # first N test images only (tests); None = the full test set
    calibration_images: int = 1000        # train images that set the exported vbits
    eval_batch: int = 1000
    max_acc_bits: int = 32
    threads: int | None = None            # torch threads; None = all cores (at most 4)
    progress: bool = True                 # tqdm bars

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """A copy of preset ``name`` with fields replaced; ``epochs`` / ``qat_epochs`` are accepted as the command
        line's names of ``epochs_float`` / ``epochs_qat``."""
        return preset(name, **overrides)

    def validate(self) -> "TrainConfig":
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, not {self.surrogate!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be 'onecycle' or 'cosine', not {self.schedule!r}")
        if self.epochs_float < 0 or self.epochs_qat < 0 or self.epochs_float + self.epochs_qat == 0:
            raise ValueError("epochs_float and epochs_qat must be >= 0, with at least one epoch in all")
        return self


# Run-independent fields: changing them does not make an out dir's saved state stale.
_RUN_ONLY = {"out", "progress", "threads", "eval_batch", "test_subset", "calibration_images", "max_acc_bits"}

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    # ~4 minutes on 2 cores including export and the full 10k-image deployed evaluation
    "demo": TrainConfig(epochs_float=3, epochs_qat=1, lr=5e-3, out="build/demo", calibration_images=500),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A copy of a preset config with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    for alias, field_name in _ALIASES.items():
        if alias in overrides:
            overrides[field_name] = overrides.pop(alias)
    return dataclasses.replace(PRESETS[name], **overrides)


_ALIASES = {"epochs": "epochs_float", "qat_epochs": "epochs_qat"}


# --- helpers ------------------------------------------------------------------------------------------------


def _set_threads(config: TrainConfig) -> None:
    n = config.threads or min(4, os.cpu_count() or 1)
    torch.set_num_threads(n)


def _batches(n: int, batch: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch):
        yield order[start:start + batch]


def _augment(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to +-shift pixels per image, filling with 0 (what zero padding sees)."""
    if shift <= 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, B), generator=generator)
    rows = (dy[:, None] + torch.arange(H)[None])[:, None, :, None].expand(B, C, H, W)
    cols = (dx[:, None] + torch.arange(W)[None])[:, None, None, :].expand(B, C, H, W)
    out = padded[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    return out


@torch.no_grad()
def evaluate(model: SpikingNet, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of the float/QAT model (eval mode) on uint8 images."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = torch.as_tensor(images[start:start + batch]).float() / PIXEL_MAX
        correct += int((model(x).argmax(1).numpy() == labels[start:start + batch]).sum())
    model.train(was_training)
    return correct / max(1, len(images))


@torch.no_grad()
def evaluate_checkpoint(checkpoint, images: np.ndarray, labels: np.ndarray, time_steps: int | None = None,
                        batch: int = 1000) -> dict:
    """The QAT model of a checkpoint on uint8 images: ``{"accuracy": float, "spike_counts": {layer: spikes}}``."""
    from .export import load_model

    model, _ = load_model(checkpoint)
    names = [f"{spec.kind}{i + 1}" for i, spec in enumerate(model.arch.layers[:-1])]
    counts = dict.fromkeys(names, 0)
    correct = 0
    for start in range(0, len(images), batch):
        out = model.run(torch.as_tensor(images[start:start + batch]).float() / PIXEL_MAX, time_steps)
        correct += int((out.logits.argmax(1).numpy() == labels[start:start + batch]).sum())
        for name, spikes in zip(names, out.spikes):
            counts[name] += int(spikes.sum())
    return {"accuracy": correct / max(1, len(images)), "spike_counts": counts}


def _build(config: TrainConfig, quantized: bool) -> SpikingNet:
    return spiking_net(config.arch, time_steps=config.time_steps, quantized=quantized, surrogate=config.surrogate,
                       width=config.surrogate_width, leak_shift=config.leak_shift)


def _optimizer(config: TrainConfig, model: SpikingNet, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, opt, phase: str, steps: int):
    if phase == "float" and config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(1, steps))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _freeze_bn(model: SpikingNet) -> None:
    for block in model.blocks:
        block.bn.eval()


@torch.no_grad()
def _recalibrate_bn(model: SpikingNet, images: np.ndarray, config: TrainConfig, generator: torch.Generator) -> None:
    """Re-measure BN statistics with the quantized weights (cumulative average over a few batches)."""
    saved = []
    for block in model.blocks:
        saved.append(block.bn.momentum)
        block.bn.reset_running_stats()
        block.bn.momentum = None
    model.train()
    for k, idx in enumerate(_batches(len(images), config.batch_size, generator)):
        if k >= config.bn_calibration_batches:
            break
        model(torch.as_tensor(images[idx.numpy()]).float() / PIXEL_MAX)
    for block, momentum in zip(model.blocks, saved):
        block.bn.momentum = momentum


def _config_key(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in _RUN_ONLY}


# --- the pipeline ---------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict:
    """Run (or resume) the whole schedule; returns the summary that is also written to <out>/summary.json."""
    config.validate()
    _set_threads(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "last.pt"
    t_start = time.time()
    log = (lambda *a: print(*a, flush=True))

    x_train, y_train = load_dataset(config.dataset, "train", config.data_dir)
    x_test, y_test = load_dataset(config.dataset, "test", config.data_dir)
    if config.train_subset:
        pick = np.random.default_rng(config.seed).permutation(len(x_train))[:config.train_subset]
        x_train, y_train = x_train[pick], y_train[pick]
    if config.test_subset:
        x_test, y_test = x_test[:config.test_subset], y_test[:config.test_subset]

    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    total_epochs = config.epochs_float + config.epochs_qat
    state = None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["config_key"] != _config_key(config):
            diff = sorted(k for k in _config_key(config) if state["config_key"].get(k) != _config_key(config)[k])
            raise RuntimeError(f"{out} holds a run with a different config (differs in {', '.join(diff)}); use "
                               "another --out or delete that folder to start over")
        log(f"resuming from {state_path}: {state['epochs_done']}/{total_epochs} epochs done")
    history = state["history"] if state else []
    epochs_done = state["epochs_done"] if state else 0
    timings = state["timings"] if state else {"float_s": 0.0, "qat_s": 0.0}
    float_acc = state.get("float_acc") if state else None

    model = opt = sched = None
    phase = None

    def start_phase(new_phase: str):
        nonlocal model, opt, sched, phase
        phase = new_phase
        torch.manual_seed(config.seed)
        if new_phase == "float":
            model = _build(config, quantized=False)
            opt = _optimizer(config, model, config.lr)
        else:
            model = _build(config, quantized=True)
            opt = _optimizer(config, model, config.lr_qat)
        steps = steps_per_epoch * (config.epochs_float if new_phase == "float" else config.epochs_qat)
        sched = _scheduler(config, opt, new_phase, steps)
        if new_phase == "qat":
            model.set_deploy_aware(config.deploy_aware)

    def model_for_qat_start(float_state: dict | None):
        # the QAT model starts from the float weights (same parameter names); BN re-measured on quantized weights
        if float_state is not None:
            model.load_state_dict(float_state)
        if config.deploy_aware:
            model.set_deploy_aware(False)
            _recalibrate_bn(model, x_train, config, torch.Generator().manual_seed(config.seed + 7919))
            model.set_deploy_aware(True)

    # restore the phase in progress
    if state is not None and state["epochs_done"] > 0:
        if state["phase"] == "float" and epochs_done < config.epochs_float:
            start_phase("float")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        elif state["phase"] == "qat" and epochs_done > config.epochs_float:
            start_phase("qat")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
    float_state = state.get("float_state") if state else None

    for epoch in range(epochs_done, total_epochs):
        want = "float" if epoch < config.epochs_float else "qat"
        if phase != want:
            if want == "qat":
                if float_state is None and config.epochs_float > 0:
                    float_state = {k: v.clone() for k, v in model.state_dict().items()}
                start_phase("qat")
                model_for_qat_start(float_state)
            else:
                start_phase("float")
        t0 = time.time()
        model.train()
        if phase == "qat" and config.deploy_aware:
            _freeze_bn(model)
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        total_loss, seen, correct = 0.0, 0, 0
        bar = tqdm(_batches(len(x_train), config.batch_size, gen), total=steps_per_epoch, disable=not config.progress,
                   desc=f"{phase} epoch {epoch + 1}/{total_epochs}", leave=False, file=sys.stderr, mininterval=2)
        for idx in bar:
            x = torch.as_tensor(x_train[idx.numpy()]).float() / PIXEL_MAX
            y = torch.as_tensor(y_train[idx.numpy()])
            x = _augment(x, config.augment_shift, gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        timings[f"{phase}_s"] += time.time() - t0
        test_acc = evaluate(model, x_test, y_test, config.eval_batch)
        history.append({"epoch": epoch + 1, "phase": phase, "loss": total_loss / max(1, seen),
                        "train_acc": correct / max(1, seen), "test_acc": test_acc, "seconds": time.time() - t0})
        log(f"{phase} epoch {epoch + 1}/{total_epochs}: loss {total_loss / max(1, seen):.4f} train acc "
            f"{correct / max(1, seen):.4f} test acc {test_acc:.4f} ({time.time() - t0:.0f} s)")
        if phase == "float" and epoch + 1 == config.epochs_float:
            float_acc = test_acc
            float_state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save({"config_key": _config_key(config), "phase": phase, "epochs_done": epoch + 1,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": history, "timings": timings, "float_acc": float_acc,
                    "float_state": float_state}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)

    if model is None:  # every epoch was already done: rebuild the final model
        start_phase("qat" if config.epochs_qat else "float")
        model.load_state_dict(state["model"])
    if config.epochs_qat == 0:
        # no QAT phase: quantize the float weights as they are (post-training quantization)
        start_phase("qat")
        model_for_qat_start(float_state if float_state is not None else state["model"])
    model.eval()
    qat_acc = evaluate(model, x_test, y_test, config.eval_batch)
    # the same weights with plain float BN (no rounded thresholds/biases): what deploy-aware training absorbed
    model.set_deploy_aware(False)
    qat_unrounded_acc = evaluate(model, x_test, y_test, config.eval_batch)
    model.set_deploy_aware(config.deploy_aware)
    checkpoint = {"config": asdict(config), "model": model.state_dict(), "deploy_aware": config.deploy_aware,
                  "arch": str(model.arch)}
    torch.save(checkpoint, out / "checkpoint.pt")

    t0 = time.time()
    calib = x_train[:config.calibration_images]
    net = export_network(model, max_acc_bits=config.max_acc_bits, calibration_images=calib)
    net.metadata.update(dataset=config.dataset)
    netimage.save(net, out / "network.sfnet")
    export_s = time.time() - t0
    t0 = time.time()
    deployed_acc = deployed_accuracy(net, x_test, y_test, config.time_steps, config.eval_batch)
    deployed_s = time.time() - t0
    clamp_images = x_test[:1000]
    clamp = membrane_statistics(net, clamp_images, config.time_steps)

    summary = {
        "dataset": config.dataset, "arch": str(model.arch), "time_steps": config.time_steps,
        "train_images": int(len(x_train)), "test_images": int(len(x_test)),
        "float_accuracy": float_acc, "qat_accuracy": qat_acc, "qat_unrounded_accuracy": qat_unrounded_acc,
        "deployed_accuracy": deployed_acc,
        "rounding_cost": None if qat_acc is None else qat_acc - deployed_acc,
        "layers": [{"name": p.name, "shape": list(p.shape), "vbits": p.vbits, "acc_bits": p.acc_bits,
                    "threshold_range": None if p.threshold is None else [int(p.threshold.min()),
                                                                         int(p.threshold.max())],
                    "clamp_fraction_test1000": clamp[i]["clamp_fraction"]}
                   for i, p in enumerate(net.populations) if p.kind != "input"],
        "parameter_bits": netimage.parameter_bits(net),
        "membrane_bits": sum(p.vbits * p.size for p in net.populations if p.kind != "input"),
        "seconds": {**{k: round(v, 1) for k, v in timings.items()}, "export_s": round(export_s, 1),
                    "deployed_eval_s": round(deployed_s, 1), "wall_s_this_call": round(time.time() - t_start, 1)},
        "history": history, "config": asdict(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"\n{netimage.summary(net)}")
    log(f"test accuracy ({len(x_test)} images): float {_fmt(float_acc)}  QAT {_fmt(qat_acc)}  "
        f"deployed integer {_fmt(deployed_acc)}")
    log(f"wall time: float {timings['float_s']:.0f} s, QAT {timings['qat_s']:.0f} s, export {export_s:.0f} s, "
        f"deployed eval {deployed_s:.0f} s; this call {time.time() - t_start:.0f} s -> {out / 'summary.json'}")
    return summary


def _fmt(acc):
    return "n/a" if acc is None else f"{100 * acc:.2f}%"


def main(argv=None) -> dict:
    """Command line: ``python -m spikeforge.sw.train [--preset demo] [--field value ...]``."""
    p = argparse.ArgumentParser(prog="spikeforge train", description="Train, export and evaluate a spiking CNN.")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        else:
            conv = {"int": int, "float": float, "str": str, "int | None": _opt(int), "str | None": _opt(str)}[f.type]
            p.add_argument(flag, type=conv, default=None)
    args = vars(p.parse_args(argv))
    name = args.pop("preset")
    return train(preset(name, **{k: v for k, v in args.items() if v is not None}))


def _opt(conv):
    return lambda s: None if s.lower() in ("none", "") else conv(s)


if __name__ == "__main__":
    main()
