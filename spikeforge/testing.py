"""Test support: random network images, chains of conv2d / dense LIF populations ending in a readout, and
residual networks with joins and shortcuts.

Only the tests (and the randomized comparisons of reference and hardware) use it.

Every parameter is drawn from the whole legal range of its width so that the tests reach the edge cases
(negative biases, thresholds of 1, saturation, leaks from 1 to 15, integrate-and-fire). numpy only.
"""

from __future__ import annotations

import numpy as np

from spikeforge.netimage import (Network, Population, Projection, conv_output_size, required_acc_bits,
                                 signed_bits_for, signed_range, validate)


def random_network(seed: int, *, input_shape=(1, 6, 6), layers=None, time_steps: int = 10,
                   wbits: int | None = None, vbits: int | None = None, activity: float = 1.0) -> Network:
    """A random chain network.

    ``layers`` is a list of specs: ``("conv", C_out, kernel, stride, padding)`` or ``("dense", N)``; the last
    entry becomes the readout (a ``("dense", N)`` or a conv). By default a random 2-4 layer chain is drawn.
    ``activity`` scales the thresholds: below 1 the network spikes more, above 1 less.
    """
    rng = np.random.default_rng(seed)
    drawn = layers is None
    if drawn:
        layers = []
        for _ in range(int(rng.integers(1, 3))):
            layers.append(("conv", int(rng.integers(1, 5)), 3, int(rng.integers(1, 3)), int(rng.integers(0, 2))))
        if rng.random() < 0.5:
            layers.append(("dense", int(rng.integers(2, 12))))
        layers.append(("dense", int(rng.integers(2, 11))))
    pops = [Population(name="input", kind="input", shape=tuple(input_shape), bits=8)]
    for li, spec in enumerate(layers):
        src = pops[-1]
        is_readout = li == len(layers) - 1
        wb = wbits or int(rng.choice([2, 3, 4, 6, 8]))
        wlo, whi = signed_range(wb)
        if spec[0] == "conv":
            _, cout, k, s, p = spec
            if len(src.shape) != 3:
                raise ValueError("a conv layer needs a C x H x W source")
            if drawn and min(src.shape[1:]) + 2 * p < k:
                p = 1  # a drawn chain shrank too far for an unpadded kernel
            h, w = (conv_output_size(src.shape[1 + a], k, s, p) for a in range(2))
            if h < 1 or w < 1:
                raise ValueError(f"layer {li}: a {k}x{k} conv with stride {s} does not fit {list(src.shape)}")
            shape = (cout, h, w)
            weight = rng.integers(wlo, whi + 1, size=(cout, src.shape[0], k, k))
            proj = Projection(source=len(pops) - 1, kind="conv2d", weight=weight, wbits=wb, stride=(s, s),
                              padding=(p, p))
        else:
            shape = (spec[1],)
            weight = rng.integers(wlo, whi + 1, size=(spec[1], src.size))
            proj = Projection(source=len(pops) - 1, kind="dense", weight=weight, wbits=wb)
        # a typical |current| sets the scale of thresholds and biases, so that neurons do fire
        xmax = 255 if src.kind == "input" else 1
        typical = max(2, int(np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1).mean() * xmax * 0.3))
        vb = vbits or int(min(32, max(6, np.ceil(np.log2(typical * 4)) + int(rng.integers(0, 3)))))
        vlo, vhi = signed_range(vb)
        channels = shape[0]
        threshold = None
        if not is_readout:
            threshold = np.clip(rng.integers(1, max(2, int(typical * activity)) + 1, size=channels), 1, vhi)
            threshold[rng.random(channels) < 0.15] = 1
        bias = rng.integers(-typical // 2, typical // 2 + 1, size=channels)
        leak = None if rng.random() < 0.3 else int(rng.integers(1, min(15, vb - 1) + 1))
        pop = Population(name=f"{'readout' if is_readout else 'layer%d' % (li + 1)}",
                         kind="readout" if is_readout else "lif", shape=shape, vbits=vb, leak_shift=leak,
                         bias=np.asarray(bias, np.int64),
                         threshold=None if threshold is None else np.asarray(threshold, np.int64),
                         projections=[proj])
        pops.append(pop)
        net = Network(pops, time_steps=time_steps)
        pop.acc_bits = required_acc_bits(net, len(pops) - 1)
        blo, bhi = signed_range(pop.acc_bits)
        pop.bias = np.clip(pop.bias, blo, bhi)
    return validate(Network(pops, time_steps=time_steps, metadata={"generator": "random_network", "seed": seed}))


def random_images(seed: int, net: Network, count: int, density: float = 0.5) -> np.ndarray:
    """uint8 images [count, C, H, W]; a fraction ``1 - density`` of the pixels is zero (as in MNIST)."""
    rng = np.random.default_rng(seed)
    shape = (count, *net.input.shape)
    pixels = rng.integers(0, (1 << net.input.bits), size=shape)
    pixels[rng.random(shape) >= density] = 0
    return pixels.astype(np.uint8)


# --- residual networks: a chain with skip projections ------------------------------------------------------


def random_residual_network(seed: int, *, input_shape=(1, 6, 6), layers=None, time_steps: int = 10,
                            wbits: int | None = None, vbits: int | None = None, activity: float = 1.0) -> Network:
    """A random network whose populations may receive several projections, from any earlier populations.

    ``layers`` is a list of specs, each adding populations after the last one (population 0 is the input):

    - ``("conv", C_out, kernel, stride, padding)`` or ``("dense", N)``, as in ``random_network``, optionally with a
      sixth / third element: a list of extra projections into the same population, each
      ``("identity", source)`` (a diagonal 1x1 conv, as sw/export_resnet.py deploys an identity shortcut: one
      spike adds the channel's threshold), ``("conv1x1", source, stride)``, ``("conv", source, kernel, stride,
      padding)`` or ``("dense", source)``, where ``source`` is an earlier population's index;
    - ``("block", C_out, stride)``: a ResNet BasicBlock, two populations: ``conv1`` (3x3, the stride, padding 1)
      from the block input, then the join: 3x3 conv from ``conv1`` plus the shortcut from the block input, an
      identity when the shape is kept, else a 1x1 conv with the stride.

    The last spec becomes the readout. By default a stem conv, one to three blocks (some strided), and a dense
    readout, sometimes with a dense skip from an earlier population, are drawn. ``activity`` scales the
    thresholds as in ``random_network``.
    """
    rng = np.random.default_rng(seed)
    if layers is None:
        layers = [("conv", int(rng.integers(1, 4)), 3, 1, 1)]
        size = min(input_shape[1:])
        for _ in range(int(rng.integers(1, 4))):
            stride = 2 if size >= 4 and rng.random() < 0.4 else 1
            size = (size - 1) // stride + 1
            layers.append(("block", int(rng.integers(1, 5)), stride))
        n_pops = 1 + 1 + 2 * (len(layers) - 1)
        extras = [("dense", int(rng.integers(0, n_pops)))] if rng.random() < 0.5 else []
        layers.append(("dense", int(rng.integers(2, 9)), extras))
    pops = [Population(name="input", kind="input", shape=tuple(input_shape), bits=8)]
    net = Network(pops, time_steps=time_steps)

    def draw_wbits():
        return wbits or int(rng.choice([2, 3, 4, 6, 8]))

    def conv_projection(source, cout, k, s, p, want=None):
        src = pops[source]
        if len(src.shape) != 3:
            raise ValueError(f"a conv projection needs a C x H x W source, not {list(src.shape)}")
        h, w = (conv_output_size(src.shape[1 + a], k, s, p) for a in range(2))
        if want is not None and (cout, h, w) != tuple(want):
            raise ValueError(f"a {k}x{k} conv with stride {s} and padding {p} maps population {source} "
                             f"{list(src.shape)} to {[cout, h, w]}, not {list(want)}")
        if h < 1 or w < 1:
            raise ValueError(f"a {k}x{k} conv with stride {s} does not fit {list(src.shape)}")
        wb = draw_wbits()
        lo, hi = signed_range(wb)
        weight = rng.integers(lo, hi + 1, size=(cout, src.shape[0], k, k))
        return Projection(source=source, kind="conv2d", weight=weight, wbits=wb, stride=(s, s), padding=(p, p)), \
            (cout, h, w)

    def dense_projection(source, n):
        wb = draw_wbits()
        lo, hi = signed_range(wb)
        weight = rng.integers(lo, hi + 1, size=(n, pops[source].size))
        return Projection(source=source, kind="dense", weight=weight, wbits=wb)

    def add(name, kind, shape, projections, identities=()):
        # a typical |current| (all projections but the identities) sets thresholds and biases, so neurons do fire
        typical = 2
        for proj in projections:
            xmax = 255 if pops[proj.source].kind == "input" else 1
            per = proj.weight.reshape(proj.weight.shape[0], -1)
            typical += int(np.abs(per).sum(axis=1).mean() * xmax * 0.3)
        vb = vbits or int(min(32, max(6, np.ceil(np.log2(typical * 4)) + int(rng.integers(0, 3)))))
        vlo, vhi = signed_range(vb)
        channels = shape[0]
        threshold = None
        if kind == "lif":
            threshold = np.clip(rng.integers(1, max(2, int(typical * activity)) + 1, size=channels), 1, vhi)
            threshold[rng.random(channels) < 0.15] = 1
        projections = list(projections)
        for source in identities:  # one spike of the block input adds one threshold's worth, as in export_resnet
            diagonal = threshold if threshold is not None else rng.integers(1, typical + 1, size=channels)
            wb = max(2, signed_bits_for(0, int(diagonal.max())))
            if wb > 16:
                diagonal, wb = np.minimum(diagonal, (1 << 15) - 1), 16
            weight = np.zeros((channels, channels, 1, 1), np.int64)
            weight[np.arange(channels), np.arange(channels), 0, 0] = diagonal
            projections.append(Projection(source=source, kind="conv2d", weight=weight, wbits=wb))
        bias = rng.integers(-typical // 2, typical // 2 + 1, size=channels)
        leak = None if rng.random() < 0.3 else int(rng.integers(1, min(15, vb - 1) + 1))
        pop = Population(name=name, kind=kind, shape=tuple(shape), vbits=vb, leak_shift=leak,
                         bias=np.asarray(bias, np.int64),
                         threshold=None if threshold is None else np.asarray(threshold, np.int64),
                         projections=projections)
        pops.append(pop)
        pop.acc_bits = required_acc_bits(net, len(pops) - 1)
        blo, bhi = signed_range(pop.acc_bits)
        pop.bias = np.clip(pop.bias, blo, bhi)
        return len(pops) - 1

    blocks = 0
    for li, spec in enumerate(layers):
        is_last = li == len(layers) - 1
        last = len(pops) - 1
        if spec[0] == "block":
            if is_last:
                raise ValueError("the last spec is the readout; end with a ('conv', ...) or ('dense', N) spec")
            _, cout, stride = spec
            blocks += 1
            proj, shape = conv_projection(last, cout, 3, stride, 1)
            inner = add(f"block{blocks}.conv1", "lif", shape, [proj])
            main, shape = conv_projection(inner, cout, 3, 1, 1)
            if tuple(shape) == tuple(pops[last].shape):
                add(f"block{blocks}", "lif", shape, [main], identities=[last])
            else:
                shortcut, _ = conv_projection(last, cout, 1, stride, 0, want=shape)
                add(f"block{blocks}", "lif", shape, [main, shortcut])
            continue
        if spec[0] == "conv":
            proj, shape = conv_projection(last, *spec[1:5])
            extras = spec[5] if len(spec) > 5 else []
        else:
            proj, shape = dense_projection(last, spec[1]), (spec[1],)
            extras = spec[2] if len(spec) > 2 else []
        projections, identities = [proj], []
        for extra in extras:
            kind, source = extra[0], extra[1]
            if not 0 <= source <= last:
                raise ValueError(f"an extra projection's source must be an earlier population (0..{last}), "
                                 f"not {source}")
            if kind == "identity":
                if tuple(pops[source].shape) != tuple(shape) or len(shape) != 3:
                    raise ValueError(f"an identity needs a source of the population's shape {list(shape)}, not "
                                     f"{list(pops[source].shape)}")
                identities.append(source)
            elif kind == "conv1x1":
                projections.append(conv_projection(source, shape[0], 1, extra[2], 0, want=shape)[0])
            elif kind == "conv":
                projections.append(conv_projection(source, shape[0], *extra[2:5], want=shape)[0])
            elif kind == "dense":
                projections.append(dense_projection(source, int(np.prod(shape))))
            else:
                raise ValueError(f"unknown extra projection kind {kind!r}")
        name = "readout" if is_last else f"layer{li + 1}"
        add(name, "readout" if is_last else "lif", shape, projections, identities)
    net.metadata = {"generator": "random_residual_network", "seed": seed}
    return validate(net)
