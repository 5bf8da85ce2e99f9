"""The configuration of a training run: every field a run depends on (TrainConfig), its checks, and the presets.

Shared by the trainer (spikeforge.sw.train), the exporter (which rebuilds a model from a checkpoint's config) and
the results page (which prints the command that reproduces a run). The command line's flags are these fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from .model import ARCHITECTURES, Architecture
from .neuron import SURROGATES

__all__ = ["ConfigError", "TrainConfig", "PRESETS", "SPARSE", "preset", "config_key", "RESNET_ARCHS", "AUTO_WIDTHS",
           "LIF_IMPLEMENTATIONS", "CHOICES", "RUN_ONLY", "ADDED_FIELDS", "ALIASES"]

RESNET_ARCHS = ("resnet6", "resnet8", "resnet10", "resnet18", "resnet34", "resnet50")
AUTO_WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # the candidates of --surrogate-width auto
# compiled: sw/fused.py's FusedLIF with its torch.compile'd T-step kernels (the default: fastest); fused: the same
# without torch.compile; autograd: sw/neuron.py's LIF, recorded step by step by autograd. Same spikes; gradients
# equal up to float rounding (tests/sw/test_fused.py).
LIF_IMPLEMENTATIONS = ("compiled", "fused", "autograd")


# the string fields that take one of a few values (the command line passes them through as written)
CHOICES = {"optimizer": ("adamw", "sgd"), "schedule": ("onecycle", "cosine"), "amp": ("off", "bf16", "fp16"),
           "channels_last": ("auto", "true", "false"), "malloc_cache": ("auto", "true", "false"),
           "huge_pages": ("auto", "true", "false"), "event_convs": ("auto", "true", "false"),
           "device": ("auto", "cpu", "cuda")}


class ConfigError(ValueError):
    """A training config (or out dir) that cannot run; the message names the field and what to do."""


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are the default schedule (``make train``) but for the spike
    penalties, which are off here and on in the ``default`` and ``demo`` presets (:data:`SPARSE`)."""

    dataset: str = "mnist"                # mnist | fashion-mnist | cifar10 | cifar100 | imagenette (sw/data.py)
    data_dir: str | None = None           # IDX folder (MNIST-style) or the unpacked dataset folder (colour sets)
    arch: str = "demo"                    # a chain (model.ARCHITECTURES name or c8s2w8-c16s2w4-d10w4) or resnet6..50
    time_steps: int = 10
    epochs_float: int = 24
    epochs_qat: int = 4
    batch_size: int = 128                 # the global batch: split over the DDP ranks
    lr: float = 5e-3                      # peak LR of the float phase
    lr_qat: float = 5e-4                  # start LR of the QAT phase (cosine to 0)
    weight_decay: float = 1e-4
    optimizer: str = "adamw"              # "adamw" | "sgd"
    schedule: str = "onecycle"            # float phase: "onecycle" | "cosine"
    surrogate: str = "arctan"             # one of neuron.SURROGATES
    surrogate_width: float | str = 0.5    # or "auto": sw.gradflow.auto_width picks one of AUTO_WIDTHS at the start
    leak_shift: int | None = None         # None = integrate-and-fire
    augment_shift: int = 1                # MNIST-style: random translation of +-n pixels (zero fill), train only
    deploy_aware: bool = True             # QAT with the exporter's integer arithmetic in the loop (no BNTT/ANN)
    bn_calibration_batches: int = 50      # BN statistics re-measured on the quantized weights before QAT
    seed: int = 0
    out: str = "build/train"
    train_subset: int | None = None       # first N shuffled train images only (demo, tests)
    test_subset: int | None = None        # first N test images only (tests); None = the full test set
    calibration_images: int = 1000        # train images that set the exported vbits (chain)
    eval_batch: int = 1000
    max_acc_bits: int = 32
    threads: int | None = None            # torch threads; None = all cores (at most 4)
    progress: bool = True                 # tqdm bars
    # --- added with the ResNet / colour / DDP loop; their defaults keep older out dirs resumable
    width: float = 1.0                    # ResNet width multiplier
    stem: str = "cifar"                   # ResNet stem: cifar | imagenet | imagenet_conv (sw/resnet.py)
    stem_stride: int = 1                  # ResNet 'cifar' stem's conv stride: 1, or 2 (a quarter of the neurons)
    bn: str = "shared"                    # ResNet BN kind: shared | bntt | tdbn
    wbits: int = 4                        # ResNet QAT weight bits of the hidden convs (stem 8, readout = wbits)
    ann: bool = False                     # ResNet only: the ANN twin (ReLU, T = 1); trained the same way, not exported
    image_size: int = 64                  # imagenette: decoded image side
    crop_padding: int = 4                 # colour sets: random crop with this zero padding + horizontal flip
    label_smoothing: float = 0.0
    momentum: float = 0.9                 # sgd
    nesterov: bool = True                 # sgd
    amp: str = "off"                      # off | bf16 | fp16 (torch.autocast; fp16 needs CUDA)
    compile: bool | str = False           # torch.compile the training model: False | True | "graphs" (CUDA graphs)
    deterministic: bool = False           # torch.use_deterministic_algorithms (warn-only) and no cuDNN autotuning
    grad_checkpoint: bool = False         # recompute every block's forward in backward (deep nets, long T)
    temporal_window: int | None = None    # truncated BPTT every k steps (1 = SLTT; needs a fused lif); None = exact
    checkpoint_every: int = 0             # also save the resumable state every N optimizer steps (0: per epoch)
    device: str = "auto"                  # auto (CUDA when available) | cpu | cuda
    deployed_images: int | None = None    # test images for the integer evaluation; None = all of them
    lif: str = "compiled"                 # LIF implementation: compiled | fused | autograd (same spikes, see docs)
    augment_flip: bool = False            # MNIST-style: random horizontal flip in training (clothes, not digits)
    channels_last: str = "auto"           # conv memory layout: auto (channels_last on CPU) | true | false
    malloc_cache: str = "auto"            # keep freed tensors in glibc's heap: auto (on the CPU) | true | false
    event_convs: str = "auto"             # event-driven hidden convs (sw/event_conv.py): auto | true | false
    huge_pages: str = "auto"              # torch's CPU tensors on transparent huge pages: auto (on) | true | false
    # --- spike activity (sw/train/activity.py): 0 = off, the behaviour of every run before them
    activity_penalty: float = 0.0         # W x the mean firing rate of all spiking neurons, added to the loss
    silent_blank: float = 0.0             # weight of the blank-image hinge (an all-zero image in every batch)

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """A copy of preset ``name`` with fields replaced; ``epochs`` / ``qat_epochs`` are accepted as the command
        line's names of ``epochs_float`` / ``epochs_qat``."""
        return preset(name, **overrides)

    @property
    def is_resnet(self) -> bool:
        return self.arch in RESNET_ARCHS

    def validate(self) -> "TrainConfig":
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {sorted(SURROGATES)}, not {self.surrogate!r}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                options = [repr(a) for a in allowed]
                raise ConfigError(f"{name} must be {', '.join(options[:-1])} or {options[-1]}, not {value!r}")
        if self.epochs_float < 0 or self.epochs_qat < 0 or self.epochs_float + self.epochs_qat == 0:
            raise ConfigError("epochs_float and epochs_qat must be >= 0, with at least one epoch in all")
        if self.compile not in (False, True, "graphs"):
            raise ConfigError(f"compile must be true, false or 'graphs', not {self.compile!r}")
        if self.compile == "graphs" and self.device == "cpu":
            raise ConfigError("compile 'graphs' (CUDA graphs) needs a CUDA device, not device 'cpu'; "
                              "use compile true on the CPU")
        if isinstance(self.surrogate_width, str) and self.surrogate_width != "auto":
            try:
                self.surrogate_width = float(self.surrogate_width)
            except ValueError:
                raise ConfigError(f"surrogate_width must be a number or 'auto', not {self.surrogate_width!r}") from None
        if not self.is_resnet and self.ann:
            raise ConfigError(f"ann (the ANN twin) needs a ResNet arch ({', '.join(RESNET_ARCHS)}), not {self.arch!r}")
        if self.stem_stride not in (1, 2) or (self.stem_stride != 1 and (self.stem != "cifar" or not self.is_resnet)):
            raise ConfigError(f"stem_stride must be 1 or 2, and 2 only with a ResNet's 'cifar' stem (the 'imagenet' "
                              f"stems already have stride 2), not {self.stem_stride!r} with arch {self.arch!r} and "
                              f"stem {self.stem!r}")
        if self.lif not in LIF_IMPLEMENTATIONS:
            raise ConfigError(f"lif must be one of {', '.join(LIF_IMPLEMENTATIONS)}, not {self.lif!r}")
        if self.temporal_window is not None and self.lif == "autograd":
            raise ConfigError(f"temporal_window {self.temporal_window} needs the fused LIF (lif compiled or fused); "
                              "lif autograd always trains with exact BPTT")
        if self.ann and self.surrogate_width == "auto":
            raise ConfigError("surrogate_width 'auto' measures spiking neurons; the ANN twin (ann) has none")
        if not self.is_resnet:
            try:
                ARCHITECTURES.get(self.arch) or Architecture.parse(self.arch)
            except ValueError as exc:
                raise ConfigError(f"arch {self.arch!r} is neither a ResNet ({', '.join(RESNET_ARCHS)}) nor a chain "
                                  f"({', '.join(ARCHITECTURES)} or a string like c8s2w8-c16s2w4-d10w4): {exc}") from None
        for name in ("activity_penalty", "silent_blank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0 (0: off), not {value!r}")
        if (self.activity_penalty or self.silent_blank) and (self.ann or self.compile):
            raise ConfigError("activity_penalty and silent_blank read the spikes through hooks on the neurons, which "
                              + ("the ANN twin (ann) has none of" if self.ann else "torch.compile of the whole model "
                                 "(compile) does not run; use compile false, or set both penalties to 0"))
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 steps, not {self.checkpoint_every}")
        return self


# Run-independent fields: changing them does not make an out dir's saved state stale.
RUN_ONLY = {"out", "progress", "threads", "eval_batch", "test_subset", "calibration_images", "max_acc_bits",
             "checkpoint_every", "device", "deployed_images", "compile", "lif", "channels_last", "malloc_cache",
             "event_convs", "huge_pages"}
# Fields added after out dirs already existed: left out of the config key while at their default, so those resume.
ADDED_FIELDS = ("width", "stem", "stem_stride", "bn", "wbits", "ann", "image_size", "crop_padding", "label_smoothing",
                "momentum", "nesterov", "amp", "deterministic", "grad_checkpoint", "temporal_window", "augment_flip",
                "activity_penalty", "silent_blank")

PAPER_SETTING = dict(dataset="cifar100", arch="resnet50", time_steps=10, epochs_float=200, epochs_qat=20,
                     batch_size=128, optimizer="sgd", lr=0.1, lr_qat=0.01, weight_decay=5e-4, schedule="cosine",
                     label_smoothing=0.1, wbits=8, bn="shared", stem="cifar", out="build/resnet50-cifar100",
                     deployed_images=1000)

# the spike penalties the MNIST presets train with (docs/training.md, "Fewer spikes"): on the default schedule a
# 1.8x smaller cost proxy (about the accelerator's work per image) than without them at the same deployed accuracy
# (98.71% vs 98.64%), and silent on an all-zero image; 0.3 halves the spikes again but lands at 98.47-98.56%.
# Tuned on the chain: preset() leaves them off for a ResNet unless they are given.
SPARSE = dict(activity_penalty=0.1, silent_blank=1.0)

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(**SPARSE),
    # ~4 minutes on 2 cores including export and the full 10k-image deployed evaluation
    "demo": TrainConfig(epochs_float=3, epochs_qat=1, lr=5e-3, out="build/demo", calibration_images=500, **SPARSE),
    # the paper's setting: spiking ResNet-50 on CIFAR-100, T = 10 (docs/training.md: 1 GPU, or 8 with torchrun)
    "resnet50-cifar100": TrainConfig(**PAPER_SETTING),
    "resnet50-cifar100-ann": TrainConfig(**{**PAPER_SETTING, "ann": True, "out": "build/resnet50-cifar100-ann"}),
}


# the command line's names of two fields
ALIASES = {"epochs": "epochs_float", "qat_epochs": "epochs_qat"}


def preset(name: str, **overrides) -> TrainConfig:
    """A copy of a preset config with some fields replaced. The spike penalties of a preset (:data:`SPARSE`) are
    tuned on the MNIST chain: with a ResNet arch they are off (0) unless ``overrides`` gives them."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    for alias, field_name in ALIASES.items():
        if alias in overrides:
            overrides[field_name] = overrides.pop(alias)
    if overrides.get("arch", PRESETS[name].arch) in RESNET_ARCHS:
        overrides = {**{field: 0.0 for field in SPARSE}, **overrides}
    return dataclasses.replace(PRESETS[name], **overrides)



def config_key(config: TrainConfig) -> dict:
    """The fields that make an out dir's saved state belong to this config (resuming checks it)."""
    defaults = TrainConfig()
    return {k: v for k, v in asdict(config).items()
            if k not in RUN_ONLY and not (k in ADDED_FIELDS and v == getattr(defaults, k))}
