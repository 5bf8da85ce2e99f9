"""Random network images for tests: chains of conv2d / dense LIF populations ending in a readout.

Every parameter is drawn from the whole legal range of its width so that the tests reach the edge cases
(negative biases, thresholds of 1, saturation, leaks from 1 to 15, integrate-and-fire). numpy only.
"""

from __future__ import annotations

import numpy as np

from spikeforge.netimage import (Network, Population, Projection, conv_output_size, required_acc_bits,
                                 signed_range, validate)


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
