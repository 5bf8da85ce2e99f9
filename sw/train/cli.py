"""The command line of ``spikeforge train``: one flag per TrainConfig field (sw/config.py), a preset to start from,
and a help line per flag.

Importing this module loads no model code: :func:`main` applies the allocator options before it imports the
trainer (PyTorch reads its huge-page switch at the process's first tensor).
"""

from __future__ import annotations

import argparse
import dataclasses

from spikeforge.allocator import use_huge_pages

from ..config import ALIASES, AUTO_WIDTHS, PRESETS, RESNET_ARCHS, TrainConfig, preset
from ..neuron import SURROGATES

__all__ = ["HELP", "build_parser", "main"]


HELP = {
    "dataset": "mnist | fashion-mnist (packaged) | cifar10 | cifar100 | imagenette (need --data-dir)",
    "data_dir": "folder of MNIST-style IDX files, or where cifar10/cifar100/imagenette was unpacked",
    "arch": "a chain (demo, demo24, wide or a string like c8s2w8-c16s2w4-d10w4; 1x28x28 only) or "
            + " | ".join(RESNET_ARCHS),
    "time_steps": "simulation steps T per image",
    "epochs_float": "float-phase epochs (alias --epochs)",
    "epochs_qat": "QAT-phase epochs (alias --qat-epochs); 0 = quantize the float weights after training",
    "batch_size": "global batch: under torchrun each of the N ranks gets 1/N of it",
    "lr": "peak learning rate of the float phase",
    "lr_qat": "start learning rate of the QAT phase (cosine to 0)",
    "weight_decay": "weight decay of the optimizer",
    "optimizer": "adamw | sgd",
    "schedule": "float-phase schedule: onecycle | cosine",
    "surrogate": "surrogate gradient: " + " | ".join(sorted(SURROGATES)),
    "surrogate_width": "surrogate width w, or 'auto' (measure gradient flow at initialization and pick one of "
                       + ", ".join(map(str, AUTO_WIDTHS)) + ")",
    "leak_shift": "LIF leak V -= V / 2^k; none = integrate-and-fire",
    "augment_shift": "MNIST-style: random +-n pixel shifts in training",
    "augment_flip": "MNIST-style: random horizontal flips in training (true/false; for fashion-mnist, not digits)",
    "deploy_aware": "QAT with the exporter's rounded thresholds, biases and shortcuts in the loop (true/false)",
    "bn_calibration_batches": "batches that re-measure BN statistics on the quantized weights before QAT",
    "seed": "the only source of randomness (init, order, augmentation)",
    "out": "output folder: last.pt (resumable state), checkpoint.pt, network.sfnet, summary.json",
    "train_subset": "train on the first N shuffled train images only",
    "test_subset": "evaluate on the first N test images only",
    "calibration_images": "chain export: train images that size the membrane widths",
    "eval_batch": "images per evaluation batch",
    "max_acc_bits": "export error when an accumulator needs more bits",
    "threads": "torch CPU threads (default: cores, at most 4)",
    "progress": "tqdm progress bars (true/false)",
    "width": "ResNet width multiplier of every stage",
    "stem": "ResNet stem: cifar | imagenet (max-pool, not exportable) | imagenet_conv",
    "stem_stride": "ResNet cifar stem's conv stride: 1, or 2 (every later layer on a quarter of the positions)",
    "bn": "ResNet BN kind: shared | bntt | tdbn",
    "wbits": "ResNet QAT weight bits of the hidden convs (stem 8 bits, readout the same as these)",
    "ann": "train the ResNet's ANN twin (ReLU, no time steps; not exported) to measure the SNN-vs-ANN gap",
    "image_size": "imagenette: decoded image side in pixels",
    "crop_padding": "cifar/imagenette: random-crop zero padding (with a random horizontal flip)",
    "label_smoothing": "cross-entropy label smoothing",
    "momentum": "sgd momentum",
    "nesterov": "sgd Nesterov momentum (true/false)",
    "amp": "mixed precision of the float phase: off | bf16 | fp16 (fp16 on CUDA only, with a gradient scaler); "
           "QAT runs in float32",
    "compile": "torch.compile the training model: true | false | graphs (CUDA graphs, mode reduce-overhead: one "
               "CUDA device)",
    "deterministic": "torch.use_deterministic_algorithms (warn only) and no cuDNN autotuning (true/false)",
    "grad_checkpoint": "recompute each block's forward during backward: less memory for deep nets and long T",
    "temporal_window": "truncated BPTT every k steps (fused LIF, sw/fused.py), 1 = SLTT; none = exact BPTT",
    "checkpoint_every": "also save the resumable state every N steps (0: after every epoch only)",
    "device": "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)",
    "deployed_images": "test images for the deployed integer evaluation (none = all)",
    "lif": "LIF implementation: compiled (fused T-step kernels, torch.compile) | fused (no compile) | autograd",
    "channels_last": "conv memory layout: auto (channels_last on the CPU, where float epochs train 1.4x faster; a "
                     "ResNet's QAT phase stays NCHW) | true | false (NCHW)",
    "event_convs": "event-driven forward and weight gradient for a spiking ResNet's hidden convs with >= 64 output "
                   "channels (sw/event_conv.py; CPU, float32, channels_last, no --compile; its C++ kernels are "
                   "built once, needing g++ and ninja): auto (where they apply; off with a log line if they cannot "
                   "be built) | true (stop if they cannot be built) | false",
    "huge_pages": "put torch's CPU tensors of 2 MiB and more on transparent huge pages (fewer page faults on each "
                  "step's large tensors): auto (on, unless THP_MEM_ALLOC_ENABLE is set) | true | false",
    "activity_penalty": "weight W of the activity regularizer: W x the mean firing rate of all spiking neurons "
                        "(spikes / (T x images x neurons)) is added to the loss; 0 = off, and off for a ResNet "
                        "unless given (docs/training.md)",
    "silent_blank": "weight of the blank-image penalty: an all-zero image joins every batch and each neuron's "
                    "cumulative current on it must stay below 3/4 of its threshold; 0 = off, and off for a ResNet "
                    "unless given (docs/training.md)",
    "malloc_cache": "keep freed tensors in glibc's heap instead of unmapping them (no page faults on each step's "
                    "large tensors; faster, ~15-40%% more peak memory): auto (on the CPU) | true | false",
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _parse_compile(text: str) -> bool | str:
    if text.lower() == "graphs":
        return "graphs"
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or graphs, not {text!r}") from None


def _width(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``spikeforge train``: ``--preset`` and one flag per TrainConfig field."""
    p = argparse.ArgumentParser(prog="spikeforge train", description="Train (float, then QAT), export and evaluate "
                                "a spiking network; every flag overrides the preset's value.")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="starting config: " + ", ".join(sorted(PRESETS)) + " (default: default)")
    convs = {"int": int, "float": float, "str": str, "int | None": _opt(int), "str | None": _opt(str),
             "bool": _parse_bool, "float | str": _width, "bool | str": _parse_compile}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + [f"--{a.replace('_', '-')}" for a, t in ALIASES.items() if t == f.name]
        default = getattr(PRESETS["default"], f.name)
        p.add_argument(*names, dest=f.name, type=convs[f.type], default=None, metavar=f.name.upper(),
                       help=f"{HELP[f.name]} (default: {default})")
    return p


def main(argv=None) -> dict:
    """Command line: ``spikeforge train [--preset NAME] [--field value ...]``, also ``python -m
    spikeforge.sw.train``; under ``torchrun --nproc-per-node N -m spikeforge.sw.train ...`` every rank runs it
    (DDP)."""
    args = vars(build_parser().parse_args(argv))
    name = args.pop("preset")
    config = preset(name, **{k: v for k, v in args.items() if v is not None})
    # before the trainer is imported: PyTorch reads the huge-page switch at the process's first tensor, and
    # importing the models (Brevitas) allocates some
    use_huge_pages(config.huge_pages)
    from .schedule import train

    return train(config)


def _opt(conv):
    return lambda s: None if s.lower() in ("none", "") else conv(s)
