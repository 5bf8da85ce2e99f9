"""The training schedule in phases: float phase -> QAT fine-tune (deploy-aware for what has an integer form) -> export
-> deployed integer evaluation.

``train(TrainConfig(...))`` is the whole pipeline for the demo chain (sw/model.py) and the spiking ResNets
(sw/resnet.py, or their ANN twins), on MNIST-style or colour datasets (sw/data.py), on one CPU/GPU or many through
torchrun (DDP). Every epoch (and every ``checkpoint_every`` steps) leaves a resumable state in the out dir; the end
writes checkpoint.pt (config + QAT weights), network.sfnet and summary.json (float / QAT / deployed accuracy and
spikes per image per layer side by side, the deployed network's spikes on a blank image, wall times); the optional
spike penalties are sw/train/activity.py's. :class:`TrainingRun` holds one run's state; each of its methods is one
phase of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spikeforge import netimage
from spikeforge.allocator import HUGE_PAGES_VARIABLE, malloc_cache, use_huge_pages

from ..config import AUTO_WIDTHS, ConfigError, TrainConfig, config_key
from ..data import NUM_CLASSES, load_dataset
from ..export import blank_spikes, deployed_activity, export_chain, export_resnet, membrane_statistics
from ..gradflow import auto_width
from ..model import PIXEL_MAX
from ..models import build_model, evaluate
from . import activity, runtime, steps

__all__ = ["train", "TrainingRun", "after_step"]

# Test hook: called after every optimizer step as after_step(model, epoch, step) (step counts from 1 in the epoch).
after_step = None


def train(config: TrainConfig) -> dict:
    """Run (or resume) the whole schedule; returns the summary that is also written to <out>/summary.json.

    Under torchrun every rank calls this; only rank 0 writes files and exports, and the other ranks return the
    summary without the deployed (integer) results.
    """
    config.validate()
    runtime.set_threads(config)
    dist = runtime.setup_distributed(config)
    try:
        if config.compile == "graphs" and (dist.device.type != "cuda" or dist.world > 1):
            raise ConfigError(f"compile 'graphs' (CUDA graphs) runs on one CUDA device, not on {dist.device.type} "
                              f"with {dist.world} process(es); use compile true")
        with malloc_cache(config.malloc_cache == "true" or (config.malloc_cache == "auto" and
                                                            dist.device.type == "cpu")) as cached:
            if config.malloc_cache == "true" and not cached:
                raise ConfigError("malloc_cache true needs glibc's mallopt (Linux); use --malloc-cache auto or false")
            return TrainingRun(config, dist, cached).run()
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def _choose_width(config: TrainConfig, x_train: np.ndarray, input_shape, classes: int, log,
                  device: torch.device | None = None) -> float:
    """--surrogate-width auto: the width of AUTO_WIDTHS whose gradient reaches the first layer at about the size it
    has at the last (sw.gradflow.auto_width), measured on the float model at initialization with 8 train images."""
    t0 = time.time()
    data = torch.as_tensor(x_train[:8]).float() / PIXEL_MAX
    # eager fused LIF: the measurement swaps surrogates per width, which would make torch.compile recompile
    width = auto_width(lambda: build_model(config, False, input_shape, classes, surrogate_width=1.0, lif="fused"),
                       AUTO_WIDTHS,
                       time_steps=config.time_steps, batch=len(data), input_shape=input_shape,
                       surrogate=config.surrogate, data=data, classes=classes, seed=config.seed, device=device)
    log(f"surrogate width auto: chose {width} of {list(AUTO_WIDTHS)} ({time.time() - t0:.1f} s of gradient flow "
        "measurement)")
    return float(width)


def _describe(config: TrainConfig) -> str:
    if not config.is_resnet:
        return "spiking chain"
    kind = "ANN twin (ReLU, T=1)" if config.ann else f"spiking, T={config.time_steps}"
    stem = config.stem + (" s2" if config.stem_stride == 2 else "")
    return f"{config.arch} x{config.width:g} {kind}, stem {stem}, bn {config.bn}, {config.wbits}-bit weights"


def _fmt(acc):
    return "n/a" if acc is None else f"{100 * acc:.2f}%"


class TrainingRun:
    """One call of :func:`train`: the data, the resumable state, and the model of the phase in progress.

    :meth:`run` goes through the phases: :meth:`load_data`, :meth:`restore` (the out dir's saved state and the
    surrogate width), one :meth:`run_epoch` per epoch (:meth:`start_phase` builds the float or QAT model when the
    phase changes, :meth:`start_qat` carries the float weights over), then :meth:`final_accuracies` and
    :meth:`deploy` (checkpoint, export, integer evaluation, summary.json).
    """

    def __init__(self, config: TrainConfig, dist: runtime.Dist, malloc_cached: bool = False):
        self.config, self.dist, self.malloc_cached = config, dist, malloc_cached
        self.out = Path(config.out)
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "last.pt"
        self.started = time.time()
        self.log = (lambda *a: print(*a, flush=True)) if dist.main else (lambda *a: None)
        self.device = dist.device
        # QAT with the exporter's integer arithmetic in the loop; not for what has no integer form (ANN twin, BNTT,
        # the max-pool stem)
        self.deploy_aware = config.deploy_aware and not (config.is_resnet and (
            config.ann or config.bn == "bntt" or config.stem == "imagenet"))
        self.model = self.opt = self.sched = None
        self.runner = None  # what the loop calls: the model, wrapped in DDP and/or torch.compile
        self.phase = None
        self.layout = None  # decided on the first model (both phases' models have the same convs)
        self.layouts = {}  # phase -> the layout it trained in
        self.event_phases = {}  # phase -> how many of its convs were event-driven
        self.resume_step, self.resume = 0, None

    # --- set-up ---------------------------------------------------------------------------------------------

    def load_data(self) -> None:
        config = self.config
        loader_kw = {"size": config.image_size} if config.dataset == "imagenette" else {}
        if config.dataset == "imagenette":
            loader_kw["progress"] = config.progress and self.dist.main
        x_train, y_train = load_dataset(config.dataset, "train", config.data_dir, **loader_kw)
        x_test, y_test = load_dataset(config.dataset, "test", config.data_dir, **loader_kw)
        if config.train_subset:
            pick = np.random.default_rng(config.seed).permutation(len(x_train))[:config.train_subset]
            x_train, y_train = x_train[pick], y_train[pick]
        if config.test_subset:
            x_test, y_test = x_test[:config.test_subset], y_test[:config.test_subset]
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.input_shape = tuple(int(n) for n in x_train.shape[1:])
        self.classes = NUM_CLASSES.get(config.dataset, int(max(y_train.max(), y_test.max())) + 1)
        self.steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
        self.total_epochs = config.epochs_float + config.epochs_qat

    def restore(self) -> None:
        """The out dir's saved state (refused if it belongs to another config), and the surrogate width."""
        config = self.config
        state = None
        if self.state_path.is_file():
            state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            saved_key, key = state["config_key"], config_key(config)
            if saved_key != key:
                diff = sorted(k for k in set(key) | set(saved_key) if saved_key.get(k) != key.get(k))
                raise ConfigError(f"{self.out} holds a run with a different config (differs in {', '.join(diff)}); "
                                  "use another --out or delete that folder to start over")
            self.log(f"resuming from {self.state_path}: {state['epochs_done']}/{self.total_epochs} epochs"
                     + (f" and {state['step']} steps of the next" if state.get("step") else "") + " done")
        self.state = state
        self.history = state["history"] if state else []
        self.epochs_done = state["epochs_done"] if state else 0
        self.timings = state["timings"] if state else {"float_s": 0.0, "qat_s": 0.0}
        self.float_acc = state.get("float_acc") if state else None
        width = state.get("surrogate_width") if state else None
        if config.ann:
            width = 0.5  # unused: the twin has no spiking neurons
        elif width is None:
            width = _choose_width(config, self.x_train, self.input_shape, self.classes, self.log, self.device) \
                if config.surrogate_width == "auto" else float(config.surrogate_width)
        self.surrogate_width = width
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
        if amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ConfigError("amp 'fp16' needs a CUDA device; use --amp bf16 on the CPU, or --amp off")
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    def autocast(self):
        # QAT runs in float32: deploy-aware QAT sums integer units that bf16 (8 significant bits) cannot hold
        # exactly, and the QAT phase is short; mixed precision is for the float phase
        if self.amp_dtype is None or self.phase == "qat":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- phases ---------------------------------------------------------------------------------------------

    def start_phase(self, phase: str) -> None:
        """Build the phase's model (float, or QAT with Brevitas weights), its optimizer and LR schedule."""
        config = self.config
        self.phase = phase
        torch.manual_seed(config.seed)
        self.model = build_model(config, phase == "qat", self.input_shape, self.classes,
                                 self.surrogate_width).to(self.device)
        if self.layout is None:
            self.layout = runtime.memory_format(config, self.model, self.device, self.log)
        layout = self.layout
        if phase == "qat" and config.is_resnet and config.channels_last == "auto":
            layout = torch.contiguous_format  # measured: a ResNet's deploy-aware QAT epoch is ~10% slower in NHWC
        self.layouts[phase] = str(layout).split(".")[-1]
        # before the optimizer's state
        self.event_phases[phase] = runtime.prepare_model(self.model, config, layout, self.device, self.log)
        if config.grad_checkpoint:
            runtime.enable_grad_checkpointing(self.model)
        self.opt = steps.optimizer(config, self.model, config.lr if phase == "float" else config.lr_qat)
        epochs = config.epochs_float if phase == "float" else config.epochs_qat
        self.sched = steps.lr_scheduler(config, self.opt, phase, self.steps_per_epoch * epochs)
        if phase == "qat" and self.deploy_aware:
            self.model.set_deploy_aware(True)
        self.runner = None

    def get_runner(self) -> nn.Module:
        """The model as the loop calls it: wrapped in DDP under torchrun and/or torch.compile'd, made once per
        phase."""
        if self.runner is None:
            model, config, device = self.model, self.config, self.device
            runner = model
            if self.dist.world > 1:
                if device.type == "cuda":  # BN statistics over the global batch, as on one GPU
                    nn.SyncBatchNorm.convert_sync_batchnorm(model)
                runner = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            if config.compile == "graphs":  # CUDA graphs: each step's kernels replayed without Python
                runner = torch.compile(runner, dynamic=False, mode="reduce-overhead")
            elif config.compile:  # static shapes: at most 2 per phase (last batch)
                # on CPU Inductor's own channels_last choice runs into a oneDNN hang
                # (spike_conv.onednn_weight_grad_hangs)
                options = {"layout_optimization": False} if device.type == "cpu" else None
                runner = torch.compile(runner, dynamic=False, options=options)
            self.runner = runner
        return self.runner

    def start_qat(self, float_state: dict | None) -> None:
        """The QAT model starts from the float weights (same parameter names); BN re-measured on quantized
        weights."""
        if float_state is not None:
            self.model.load_state_dict(float_state)
        if self.config.bn_calibration_batches > 0:
            self.model.set_deploy_aware(False)  # the statistics of plain BN on the quantized weights
            steps.recalibrate_bn(self.model, self.x_train, self.config,
                                 torch.Generator().manual_seed(self.config.seed + 7919), self.device)
            self.model.set_deploy_aware(self.deploy_aware)

    def resume_phase(self) -> None:
        """Restore the phase in progress (the saved model belongs to the phase of the next epoch to run)."""
        state, config = self.state, self.config
        if state is not None and state["epochs_done"] + (1 if state.get("step") else 0) > 0:
            want = "float" if self.epochs_done < config.epochs_float else "qat"
            if state["phase"] == want and self.epochs_done < self.total_epochs:
                self.start_phase(want)
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
                self.sched.load_state_dict(state["scheduler"])
                if "scaler" in state:
                    self.scaler.load_state_dict(state["scaler"])
                if state.get("step"):
                    self.resume_step, self.resume = state["step"], state
        self.float_state = state.get("float_state") if state else None

    def save_state(self, epochs_finished: int, step: int, extra: dict) -> None:
        if not self.dist.main:
            return
        torch.save({"config_key": config_key(self.config), "phase": self.phase, "epochs_done": epochs_finished,
                    "step": step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                    "history": self.history, "timings": self.timings, "float_acc": self.float_acc,
                    "float_state": self.float_state, "surrogate_width": self.surrogate_width, **extra},
                   self.state_path.with_suffix(".tmp"))
        os.replace(self.state_path.with_suffix(".tmp"), self.state_path)

    def run_epoch(self, epoch: int) -> None:
        """One epoch of the phase it belongs to (switching phase first if needed), then its test accuracy."""
        config, dist, device = self.config, self.dist, self.device
        want = "float" if epoch < config.epochs_float else "qat"
        if self.phase != want:
            if want == "qat":
                if self.float_state is None and config.epochs_float > 0:
                    self.float_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.start_phase("qat")
                self.start_qat(self.float_state)
            else:
                self.start_phase("float")
        t0 = time.time()
        model, phase = self.model, self.phase
        model.train()
        if phase == "qat" and self.deploy_aware:
            steps.freeze_bn(model)
        train_model = self.get_runner()
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        order = torch.randperm(len(self.x_train), generator=gen)
        total_loss, seen, correct, first_step, elapsed = 0.0, 0, 0, 0, 0.0
        if self.resume is not None:  # a mid-epoch state: the same permutation, the generator where it stopped
            gen.set_state(self.resume["generator"])
            total_loss, seen, correct = self.resume["partial"]
            first_step, elapsed = self.resume_step, self.resume.get("epoch_seconds", 0.0)
            self.resume = None
        batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        if dist.world > 1:  # every rank needs a share of every step's batch (a collective per step)
            batches = [b for b in batches if len(b) >= dist.world]
        bar = tqdm(range(first_step, len(batches)), total=len(batches), initial=first_step,
                   disable=not (config.progress and dist.main),
                   desc=f"{phase} epoch {epoch + 1}/{self.total_epochs}", leave=False, file=sys.stderr,
                   mininterval=2)
        # the penalties' hooks (sw/train/activity.py) only while a penalty is on: without them nothing changes
        monitor = activity.Activity(model, penalties=True, blank=config.silent_blank > 0) \
            if config.activity_penalty or config.silent_blank else None
        rate_sum = hinge_sum = 0.0
        with monitor or contextlib.nullcontext():
            for step in bar:
                idx = batches[step].numpy()
                # the whole global batch is augmented on every rank (same draws), then each rank takes its share:
                # the result does not depend on the number of ranks
                x = steps.train_batch(config, self.x_train[idx], gen)[dist.rank::dist.world].to(device,
                                                                                                   non_blocking=True)
                if monitor is not None and monitor.blank:  # the blank image goes last
                    x = torch.cat([x, torch.zeros_like(x[:1])])
                y = torch.as_tensor(self.y_train[idx])[dist.rank::dist.world].to(device, non_blocking=True)
                if config.compile == "graphs":  # a new step: the graphs may reuse the last step's output memory
                    torch.compiler.cudagraph_mark_step_begin()
                with self.autocast():
                    logits = train_model(x)
                    if monitor is not None and monitor.blank:
                        logits = logits[:-1]
                    # sum / global batch * ranks: DDP's gradient average then is the global batch's mean
                    loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing,
                                               reduction="sum")
                loss = loss_sum * (dist.world / len(idx))
                if monitor is not None:
                    penalty, rate, hinge = monitor.loss(config.activity_penalty, config.silent_blank,
                                                        config.time_steps)
                    loss, rate_sum, hinge_sum = loss + penalty, rate_sum + rate, hinge_sum + hinge
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                self.sched.step()
                total_loss += float(loss_sum.detach())
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
                if after_step is not None:
                    after_step(model, epoch, step + 1)
                if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < len(batches):
                    self.save_state(epoch, step + 1, {"generator": gen.get_state(),
                                                      "partial": (total_loss, seen, correct),
                                                      "epoch_seconds": elapsed + time.time() - t0})
        dist.broadcast_buffers(model)
        total_loss, seen, correct = dist.all_sum([total_loss, float(seen), float(correct)])
        seen, correct = int(seen), int(correct)
        self.timings[f"{phase}_s"] += time.time() - t0
        seconds = elapsed + time.time() - t0
        with activity.Activity(model) as counter:
            test_acc = evaluate(model, self.x_test, self.y_test, config.eval_batch, device=device,
                                dist=dist if dist.world > 1 else None)
        entry = {"epoch": epoch + 1, "phase": phase, "loss": total_loss / max(1, seen),
                 "train_acc": correct / max(1, seen), "test_acc": test_acc, "seconds": seconds,
                 "spikes_per_image": counter.per_image(len(self.x_test), dist)}
        if monitor is not None:  # means over this rank's steps of the batch's pooled rate and blank hinge
            done = max(1, len(batches) - first_step)
            entry.update(train_rate=rate_sum / done, blank_hinge=hinge_sum / done)
        self.history.append(entry)
        self.log(f"{phase} epoch {epoch + 1}/{self.total_epochs}: loss {total_loss / max(1, seen):.4f} train acc "
                 f"{correct / max(1, seen):.4f} test acc {test_acc:.4f} ({seconds:.0f} s); spikes per test image: "
                 f"{activity.rates(entry['spikes_per_image'])}"
                 + (f"; train rate {entry['train_rate']:.4f}, blank hinge {entry['blank_hinge']:.4f}"
                    if monitor is not None else ""))
        if phase == "float" and epoch + 1 == config.epochs_float:
            self.float_acc = test_acc
            self.float_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.save_state(epoch + 1, 0, {})

    # --- the end ----------------------------------------------------------------------------------------------

    def final_accuracies(self) -> dict:
        """The QAT model's test accuracy (and, deploy-aware, the same weights with plain float BN): the summary
        of everything but deployment."""
        config, dist, device = self.config, self.dist, self.device
        if self.model is None:  # every epoch was already done: rebuild the final model
            self.start_phase("qat" if config.epochs_qat else "float")
            self.model.load_state_dict(self.state["model"])
        if config.epochs_qat == 0:
            # no QAT phase: quantize the float weights as they are (post-training quantization)
            self.start_phase("qat")
            self.start_qat(self.float_state if self.float_state is not None else self.state["model"])
        model = self.model
        model.eval()
        eval_dist = dist if dist.world > 1 else None
        with activity.Activity(model) as counter:
            qat_acc = evaluate(model, self.x_test, self.y_test, config.eval_batch, device=device, dist=eval_dist)
        # the same weights with plain float BN (no rounded thresholds/biases): what deploy-aware training absorbed
        qat_unrounded_acc = None
        if self.deploy_aware:
            model.set_deploy_aware(False)
            qat_unrounded_acc = evaluate(model, self.x_test, self.y_test, config.eval_batch, device=device,
                                         dist=eval_dist)
            model.set_deploy_aware(self.deploy_aware)
        self.model = model.cpu()
        return {
            "dataset": config.dataset, "arch": str(getattr(self.model, "arch", config.arch)),
            "model": _describe(config), "time_steps": 1 if config.ann else config.time_steps,
            "surrogate_width": None if config.ann else self.surrogate_width,
            "train_images": int(len(self.x_train)), "test_images": int(len(self.x_test)),
            "world_size": dist.world, "float_accuracy": self.float_acc, "qat_accuracy": qat_acc,
            "float_spikes_per_image": next((h.get("spikes_per_image") for h in reversed(self.history)
                                            if h["phase"] == "float"), None),
            "qat_spikes_per_image": counter.per_image(len(self.x_test), dist),
            "qat_unrounded_accuracy": qat_unrounded_acc, "deploy_aware_qat": self.deploy_aware,
            "deployed_accuracy": None, "rounding_cost": None, "memory_format": self.layouts,
            "event_convs": self.event_phases, "malloc_cache": self.malloc_cached,
            "huge_pages": os.environ.get(HUGE_PAGES_VARIABLE), "history": self.history, "config": asdict(config)}

    def deploy(self, summary: dict) -> dict:
        """checkpoint.pt, then the integer network (network.sfnet) and its accuracy, then summary.json."""
        config, model, out = self.config, self.model, self.out
        # the width actually trained with ("auto" resolved), so that models.load_model rebuilds the same model
        checkpoint = {"config": {**asdict(config), "surrogate_width": self.surrogate_width},
                      "model": {k: v.contiguous() for k, v in model.state_dict().items()},  # NCHW, whatever trained
                      "deploy_aware": self.deploy_aware,
                      "arch": summary["arch"], "kind": "resnet" if config.is_resnet else "chain",
                      "surrogate_width": self.surrogate_width, "input_shape": list(self.input_shape),
                      "classes": self.classes}
        torch.save(checkpoint, out / "checkpoint.pt")

        net, export_s, deployed_s, note = None, 0.0, 0.0, None
        deploy_x, deploy_y = self.x_test[:config.deployed_images], self.y_test[:config.deployed_images]
        if config.ann:
            note = "ANN twin: nothing to deploy (compare its accuracy with the spiking run's)"
        elif config.is_resnet and config.stem == "imagenet":
            note = "stem 'imagenet' has a max-pool, which the integer semantics lacks: not exported"
        elif config.is_resnet and config.bn == "bntt":
            note = "BNTT has a threshold and bias per time step, which the integer semantics lacks: not exported"
        else:
            t0 = time.time()
            if config.is_resnet:
                net = export_resnet(model, max_acc_bits=config.max_acc_bits, time_steps=config.time_steps,
                                    input_shape=self.input_shape)
            else:
                net = export_chain(model, max_acc_bits=config.max_acc_bits,
                                   calibration_images=self.x_train[:config.calibration_images])
            net.metadata.update(dataset=config.dataset)
            netimage.save(net, out / "network.sfnet")
            export_s = time.time() - t0
            t0 = time.time()
            deployed = deployed_activity(net, deploy_x, deploy_y, config.time_steps, config.eval_batch)
            summary["deployed_accuracy"] = deployed["accuracy"]
            summary["deployed_spikes_per_image"] = deployed["spikes_per_image"]
            summary["blank_spikes"] = blank_spikes(net, config.time_steps)
            summary["deployed_images"] = int(len(deploy_x))
            deployed_s = time.time() - t0
            qat_acc = summary["qat_accuracy"]
            summary["rounding_cost"] = None if qat_acc is None else qat_acc - summary["deployed_accuracy"]
            clamp = membrane_statistics(net, deploy_x[:1000], config.time_steps)
            summary["layers"] = [
                {"name": p.name, "shape": list(p.shape), "vbits": p.vbits, "acc_bits": p.acc_bits,
                 "threshold_range": None if p.threshold is None else [int(p.threshold.min()),
                                                                      int(p.threshold.max())],
                 "clamp_fraction_test1000": clamp[i]["clamp_fraction"]}
                for i, p in enumerate(net.populations) if p.kind != "input"]
            summary["parameter_bits"] = netimage.parameter_bits(net)
            summary["membrane_bits"] = sum(p.vbits * p.size for p in net.populations if p.kind != "input")
        if note:
            summary["not_exported"] = note
        summary["seconds"] = {**{k: round(v, 1) for k, v in self.timings.items()}, "export_s": round(export_s, 1),
                              "deployed_eval_s": round(deployed_s, 1),
                              "wall_s_this_call": round(time.time() - self.started, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if net is not None:
            self.log(f"\n{netimage.summary(net)}")
        self.log(f"test accuracy ({len(self.x_test)} images): float {_fmt(self.float_acc)}  "
                 f"QAT {_fmt(summary['qat_accuracy'])}  deployed integer {_fmt(summary['deployed_accuracy'])}"
                 + (f" ({note})" if note else ""))
        if net is not None:
            self.log(f"deployed spikes per test image: {activity.rates(summary['deployed_spikes_per_image'])}; "
                     f"on a blank image: {activity.rates(summary['blank_spikes'])}")
        self.log(f"wall time: float {self.timings['float_s']:.0f} s, QAT {self.timings['qat_s']:.0f} s, export "
                 f"{export_s:.0f} s, deployed eval {deployed_s:.0f} s; this call {time.time() - self.started:.0f} s "
                 f"-> {out / 'summary.json'}")
        return summary

    def run(self) -> dict:
        before = os.environ.get(HUGE_PAGES_VARIABLE)
        if use_huge_pages(self.config.huge_pages) != before and self.config.huge_pages != "auto":
            self.log(f"huge_pages {self.config.huge_pages}: {HUGE_PAGES_VARIABLE} set to "
                     f"{os.environ[HUGE_PAGES_VARIABLE]} now; PyTorch reads it at the process's first tensor, so it "
                     "applies to this process only if nothing was allocated yet (spikeforge train sets it before "
                     "importing the trainer)")
        runtime.set_determinism(self.config, self.device)
        self.load_data()
        self.restore()
        self.resume_phase()
        for epoch in range(self.epochs_done, self.total_epochs):
            self.run_epoch(epoch)
        summary = self.final_accuracies()
        if not self.dist.main:
            return summary
        return self.deploy(summary)
