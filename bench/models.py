"""The models that bench/bench_train.py races: spikeforge's spiking ResNet-18 in each configuration of the
ablation, and the peers' (SpikingJelly, snnTorch) written layer for layer as the same network (same convs, BN, LIF
with tau = 2 / leak_shift = 1, soft reset, arctan surrogate of width 0.5 = alpha 2, T steps, readout = mean over T of
fc(global average)), plus the bare conv stack that bounds them. Each builder returns (model, run, reset).
"""

from __future__ import annotations

STAGES = (64, 128, 256, 512)
LEAK_SHIFT = 1  # leak V * 2^-1 per step: SpikingJelly's tau = 2 (decay_input=False), snnTorch's beta = 0.5
ALPHA = 2.0  # arctan surrogate: SpikingJelly / snnTorch alpha 2 is spikeforge's width 0.5

# spikeforge configurations: which optimizations are on (the ablation the report lists)
BEST = dict(fused=True, kernels=True, channels_last=True, stem_once=True, bool_convs=True, events=True)
SPIKEFORGE = {
    "spikeforge-autograd": dict(fused=False, kernels=False, channels_last=False, stem_once=False, bool_convs=False),
    "spikeforge-fused": dict(fused=True, kernels=False, channels_last=False, stem_once=False, bool_convs=False),
    "spikeforge-kernels": dict(fused=True, kernels=True, channels_last=False, stem_once=False, bool_convs=False),
    "spikeforge-cl": dict(fused=True, kernels=True, channels_last=True, stem_once=False, bool_convs=False),
    "spikeforge-stem": dict(fused=True, kernels=True, channels_last=True, stem_once=True, bool_convs=False),
    "spikeforge-eager": dict(BEST, kernels=False),
    "spikeforge-nofuse": dict(BEST, fuse_bn=False),
    "spikeforge": BEST,
    # without the event-driven forward and weight gradient of the hidden convs (sw/event_conv.py; CPU float32
    # convs of >= 64 output channels; `spikeforge` has them since 2026-12-04, as `spikeforge train` does)
    "spikeforge-noevents": dict(BEST, events=False),
    "spikeforge-sltt": dict(BEST, sltt=True),
    "spikeforge-bf16mem": dict(BEST, membrane_bf16=True),
    "spikeforge-compile": dict(BEST, compile=True),
    "spikeforge-bf16": dict(BEST, bf16=True),
    "spikeforge-compile-bf16": dict(BEST, compile=True, bf16=True),
    # CUDA: whole-model torch.compile with CUDA graphs (mode="reduce-overhead"): the step's ~1000 kernel launches
    # replayed as graphs, so the GPU no longer waits for Python (on the CPU the mode compiles like "default")
    "spikeforge-graphs": dict(BEST, compile="reduce-overhead"),
    "spikeforge-graphs-bf16": dict(BEST, compile="reduce-overhead", bf16=True),
    # whole-model compile with the traced LIF loop on the current's own strides (fused.TRACE_STEPS_LAST off)
    "spikeforge-compile-nchwloop": dict(BEST, compile=True, nchw_loop=True),
    "spikeforge-graphs-nchwloop-bf16": dict(BEST, compile="reduce-overhead", bf16=True, nchw_loop=True),
}


def widths(width_div: int) -> list[int]:
    return [max(1, w // width_div) for w in STAGES]


# ------------------------------------------------------------------------------------------------ the models

def spikeforge_model(cfg: dict, args):
    import torch

    from spikeforge.sw import fused
    from spikeforge.sw.fused import fused_lif_neuron
    from spikeforge.sw.spike_conv import spike_input_convs
    from spikeforge.sw.resnet import BasicBlock, SpikingResNet, lif_neuron

    fused.TRACE_STEPS_LAST = not cfg.get("nchw_loop")  # (each framework runs in a process of its own)

    factory = fused_lif_neuron if cfg["fused"] else lif_neuron
    kw = dict(sltt=True) if cfg.get("sltt") else {}
    if cfg["fused"]:
        kw["compiled"] = cfg["kernels"]
        kw["fuse_bn"] = cfg.get("fuse_bn", True)
        if cfg.get("membrane_bf16"):
            kw["membrane_dtype"] = torch.bfloat16
    model = SpikingResNet(BasicBlock, [2, 2, 2, 2], widths=widths(args.width_div), num_classes=10,
                          time_steps=args.time_steps, neuron=factory("arctan", 1 / ALPHA, leak_shift=LEAK_SHIFT, **kw))
    if cfg["bool_convs"]:
        spike_input_convs(model, events=cfg.get("events", False) and args.device == "cpu")
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def inputs(images):
        images = images.contiguous(memory_format=fmt)
        if cfg["stem_once"]:
            return images  # [B, C, H, W]: the stem's conv + BN run once per image
        return images.unsqueeze(0).repeat(args.time_steps, 1, 1, 1, 1)

    run = model
    if cfg.get("compile"):
        run = compile_model(model, cfg["compile"], args.device)
    if cfg.get("bf16"):
        run = bf16_autocast(run, args.device)
    return model, (lambda images: run(inputs(images))), None


def peer_resnet18(lif, conv_bn, linear, widths, time_loop):
    """The peers' spiking ResNet-18 skeleton (CIFAR stem, 2 BasicBlocks per stage, join before the block's second
    LIF), built from each framework's own LIF, conv+BN and linear layers; ``time_loop(net, images)`` is the peer's
    own way of running the T steps."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.lif1 = conv_bn(cin, cout, 3, stride), lif()
            self.conv2, self.lif2 = conv_bn(cout, cout, 3), lif()
            self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            shortcut = x if self.down is None else self.down(x)
            return self.lif2(self.conv2(self.lif1(self.conv1(x))) + shortcut)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.stem_lif = conv_bn(3, widths[0], 3), lif()
            blocks, c = [], widths[0]
            for i, w in enumerate(widths):
                for j in range(2):
                    blocks.append(Block(c, w, 2 if i > 0 and j == 0 else 1))
                    c = w
            self.blocks = nn.Sequential(*blocks)
            self.fc = linear(c)

        def forward(self, images):
            return time_loop(self, images)

    return Net()


def compile_model(model, mode, device: str):
    """torch.compile(model); ``mode`` True (Inductor's default) or a mode name. "reduce-overhead" (CUDA graphs)
    marks the start of every training step, so a graph's outputs of the last step may be overwritten.

    On the CPU, a network with a conv that hangs oneDNN's channels_last weight gradient (a downsample from fewer than
    8 channels: ``--width-div 16`` and up) compiles with Inductor's channels_last layout choice off, for every
    framework alike (SpikingJelly + torch.compile hung there at --width-div 64, 2026-12-04), as ``spikeforge train
    --compile true`` always does on the CPU."""
    import torch

    from spikeforge.sw.spike_conv import onednn_hang_conv

    if device == "cpu" and onednn_hang_conv(model) is not None:
        return torch.compile(model, options={"layout_optimization": False})  # (no CUDA graphs on the CPU anyway)
    if mode is True:
        return torch.compile(model)
    compiled = torch.compile(model, mode=mode)

    def run(x):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return run


def bf16_autocast(run, device: str = "cpu"):
    """``run`` under bf16 autocast on ``device`` (convs and linear layers in bf16), returning float32 logits."""
    import torch

    def wrapped(x):
        with torch.autocast(device, torch.bfloat16):
            return run(x).float()

    return wrapped


def spikingjelly_model(args, compiled: bool | str, bf16: bool = False):
    from torch import nn
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def lif():
        return neuron.LIFNode(tau=2.0 ** LEAK_SHIFT, decay_input=False, v_threshold=1.0, v_reset=None,
                              surrogate_function=surrogate.ATan(alpha=ALPHA), step_mode="m")

    def conv_bn(cin, cout, k, stride=1):
        return nn.Sequential(layer.Conv2d(cin, cout, k, stride, k // 2, bias=False, step_mode="m"),
                             layer.BatchNorm2d(cout, step_mode="m"))

    def time_loop(net, images):
        x = images.unsqueeze(0).repeat(args.time_steps, 1, 1, 1, 1)  # SpikingJelly's usual direct encoding
        x = net.blocks(net.stem_lif(net.stem(x)))
        return net.fc(x.mean(dim=(-2, -1))).mean(0)

    model = peer_resnet18(lif, conv_bn, lambda c: layer.Linear(c, 10, step_mode="m"), widths(args.width_div),
                           time_loop)
    run = compile_model(model, compiled, args.device) if compiled else model
    return model, bf16_autocast(run, args.device) if bf16 else run, lambda: functional.reset_net(model)


def snntorch_model(args):
    from torch import nn
    import snntorch
    from snntorch import surrogate

    def lif():
        return snntorch.Leaky(beta=2.0 ** -LEAK_SHIFT, threshold=1.0, spike_grad=surrogate.atan(alpha=ALPHA),
                              reset_mechanism="subtract", init_hidden=True)

    def conv_bn(cin, cout, k, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    def time_loop(net, images):  # snnTorch's idiom: the time loop outside the layers, one step at a time
        total = 0
        for _ in range(args.time_steps):
            x = net.blocks(net.stem_lif(net.stem(images)))
            total = total + net.fc(x.mean(dim=(-2, -1)))
        return total / args.time_steps

    model = peer_resnet18(lif, conv_bn, lambda c: nn.Linear(c, 10), widths(args.width_div), time_loop)
    leaky = [m for m in model.modules() if isinstance(m, snntorch.Leaky)]

    def reset():  # snntorch.utils.reset does not reach the neurons nested in the blocks: reset each one
        for m in leaky:
            m.reset_mem()

    return model, model, reset


def conv_stack(args, bf16: bool = False):
    """The bare convolutions of the spikeforge model (shapes, channels_last, fp32 or bf16 autocast, stem once per
    image), forward + backward: what the machine can do on this network's arithmetic with nothing else around it."""
    import torch
    from torch import nn

    from spikeforge.sw.spike_conv import onednn_weight_grad_hangs, spike_input_convs

    stage_widths = widths(args.width_div)
    stem = nn.Conv2d(3, stage_widths[0], 3, 1, 1, bias=False)
    blocks, c = [], stage_widths[0]
    for i, w in enumerate(stage_widths):
        for j in range(2):
            stride = 2 if i > 0 and j == 0 else 1
            down = nn.Conv2d(c, w, 1, stride, 0, bias=False) if stride != 1 or c != w else None
            blocks.append(nn.ModuleList([nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.Conv2d(w, w, 3, 1, 1, bias=False),
                                         *([down] if down is not None else [])]))
            c = w
    model = nn.ModuleList([stem, *blocks]).to(memory_format=torch.channels_last)
    for block in blocks:  # the shortcut convs that spikeforge runs in NCHW on the CPU (and hang oneDNN otherwise)
        if len(block) == 3 and onednn_weight_grad_hangs(block[2].in_channels, block[2].kernel_size, block[2].stride):
            spike_input_convs(block[2])  # spikeforge's own conv for them: its backward uses NCHW's own strides
    batch, steps = args.batch, args.time_steps

    def run(images):
        x = stem(images.contiguous(memory_format=torch.channels_last))
        x = x.unsqueeze(0).expand(steps, *x.shape).flatten(0, 1)
        out = (x > 0).float().contiguous(memory_format=torch.channels_last).requires_grad_(True)  # spikes
        total = 0.0
        for block in blocks:
            if len(block) == 3:  # the shortcut's 1x1 conv reads the block input
                total = total + block[2](out).sum()
            out = block[1](block[0](out))
        return (total + out.sum()).reshape(1, 1).expand(batch, 10)

    return model, bf16_autocast(run, args.device) if bf16 else run, None
