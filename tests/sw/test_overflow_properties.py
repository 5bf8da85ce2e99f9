"""Property tests of the exporter's overflow analysis (spikeforge.netimage.required_acc_bits, as
spikeforge.sw.export.widths.set_widths applies it): the accumulator width it gives a population is never too
narrow, and where it is tight it is exactly wide enough.

- **Accepted: no input can overflow.** For networks hypothesis draws (conv of any kernel, stride and padding,
  dense, joins from earlier populations, weights at both ends of their range, extreme thresholds, every leak) and
  for random, saturating and adversarial inputs, the integer reference is run and, at every step and neuron, the
  two extreme partial sums the hardware could hold (``leak(V)`` plus all the positive, or all the negative,
  weighted inputs of that step: any order of the events lies between them) must fit the population's
  ``acc_bits``.
- **Refused: an input overflows a narrower accumulator.** For a readout fed from the pixels (no leak), the input
  that drives V to a rail and then presents every same-signed weight at full pixel value reaches exactly the bound;
  so when ``set_widths`` refuses the network at ``max_acc_bits = need - 1``, that input would overflow such an
  accumulator. (For lif populations and leaky neurons the V term of the bound is an upper bound that the reset and
  the leak keep V below; the partial-sum term alone is attained at step 0, where V = 0, and is checked too.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spikeforge.netimage import (Network, Population, Projection, conv_output_size, partial_sum_bounds,
                                 required_acc_bits, signed_bits_for, signed_range, validate)
from spikeforge.sw import reference
from spikeforge.sw.export.widths import ExportError, set_widths

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weights(draw, shape, wbits):
    lo, hi = signed_range(wbits)
    n = math.prod(shape)
    # weights at both ends of their range, zeros and anything in between
    values = draw(st.lists(st.one_of(st.sampled_from([lo, hi, 0, -1, 1]), st.integers(lo, hi)), min_size=n,
                           max_size=n))
    return np.asarray(values, np.int64).reshape(shape)


@st.composite
def networks(draw, max_layers=3):
    """Small networks of every projection kind the file allows, widths set by the exporter's set_widths."""
    c = draw(st.integers(1, 2))
    h = draw(st.integers(2, 6))
    w = draw(st.integers(2, 6))
    bits = draw(st.sampled_from([1, 4, 8]))
    pops = [Population(name="input", kind="input", shape=(c, h, w), bits=bits)]
    net = Network(pops, time_steps=4)
    layers = draw(st.integers(1, max_layers))
    for li in range(layers):
        last = len(pops) - 1
        src = pops[last]
        kind = "readout" if li == layers - 1 else "lif"
        wbits = draw(st.integers(2, 8))
        if len(src.shape) == 3 and draw(st.booleans()):
            k = draw(st.integers(1, min(3, src.shape[1] + 2, src.shape[2] + 2)))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, min(1, k - 1)))
            oh, ow = (conv_output_size(src.shape[1 + a], k, s, p) for a in range(2))
            assume(oh >= 1 and ow >= 1)
            cout = draw(st.integers(1, 3))
            shape = (cout, oh, ow)
            projs = [Projection(source=last, kind="conv2d", weight=_weights(draw, (cout, src.shape[0], k, k), wbits),
                                wbits=wbits, stride=(s, s), padding=(p, p))]
        else:
            n = draw(st.integers(1, 6))
            shape = (n,)
            projs = [Projection(source=last, kind="dense", weight=_weights(draw, (n, src.size), wbits), wbits=wbits)]
        if last > 0 and draw(st.booleans()):  # a join: a dense projection from an earlier population too
            extra = draw(st.integers(0, last - 1))
            wb = draw(st.integers(2, 8))
            projs.append(Projection(source=extra, kind="dense",
                                    weight=_weights(draw, (math.prod(shape), pops[extra].size), wb), wbits=wb))
        vbits = draw(st.integers(4, 20))
        vlo, vhi = signed_range(vbits)
        channels = shape[0]
        threshold = None
        if kind == "lif":
            threshold = np.asarray(draw(st.lists(st.one_of(st.sampled_from([1, vhi]), st.integers(1, vhi)),
                                                 min_size=channels, max_size=channels)), np.int64)
        leak = draw(st.one_of(st.none(), st.integers(1, min(15, vbits - 1))))  # every leak shift and none
        pop = Population(name=f"p{li + 1}", kind=kind, shape=shape, vbits=vbits, leak_shift=leak,
                         bias=np.zeros(channels, np.int64), threshold=threshold, projections=projs)
        pops.append(pop)
        set_widths(net, len(pops) - 1, vbits, 48)
        blo, bhi = signed_range(pop.acc_bits)
        # biases up to the accumulator's ends: they saturate the membrane
        pop.bias = np.asarray(draw(st.lists(st.one_of(st.sampled_from([blo, bhi, 0]), st.integers(blo, bhi)),
                                            min_size=channels, max_size=channels)), np.int64)
        set_widths(net, len(pops) - 1, vbits, 48)
    return validate(net)


def _adversarial(net: Network, sign: int) -> np.ndarray:
    """The image that puts the full pixel value on every weight of population 1's first input projection that has
    the given sign, summed over that projection's output channels (a saturating, structured input)."""
    pop = net.populations[1]
    xmax = (1 << net.input.bits) - 1
    image = np.zeros(net.input.shape, np.int64)
    for proj in pop.projections:
        if proj.source != 0:
            continue
        if proj.kind == "dense":
            favour = (np.sign(proj.weight) == sign).sum(axis=0).reshape(net.input.shape)
        else:
            kern = (np.sign(proj.weight) == sign).sum(axis=0)  # [C_in, k, k]
            favour = np.zeros(net.input.shape, np.int64)
            kh, kw = kern.shape[1:]
            favour[:, :min(kh, favour.shape[1]), :min(kw, favour.shape[2])] = kern[:, :favour.shape[1], :favour.shape[2]]
        image = np.where(favour > 0, xmax, image)
    return image


@st.composite
def cases(draw):
    net = draw(networks())
    xmax = (1 << net.input.bits) - 1
    B = 3
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, xmax + 1, size=(B, *net.input.shape))
    images[1] = xmax  # all pixels at full value
    images[2] = _adversarial(net, draw(st.sampled_from([1, -1])))
    T = draw(st.integers(1, 12))
    return net, images, T


def _extreme_partial_sums(net: Network, images: np.ndarray, T: int):
    """For each population and step: leak(V) + every positive / every negative weighted input of that step."""
    pops = net.populations
    potentials: dict[tuple[int, int], torch.Tensor] = {}
    record = reference.run(net, images, T, observe=lambda t, i, v: potentials.__setitem__((t, i), v.clone()))
    x0 = torch.as_tensor(images, dtype=torch.float64)
    v_prev = [None] + [torch.zeros(len(images), *pop.shape, dtype=torch.float64) for pop in pops[1:]]
    for t in range(T):
        for i, pop in enumerate(pops[1:], 1):
            pos = torch.zeros_like(v_prev[i])
            neg = torch.zeros_like(v_prev[i])
            for proj in pop.projections:
                x = x0 if proj.source == 0 else torch.as_tensor(record.spikes[proj.source][t], dtype=torch.float64)
                for part, keep in ((pos, proj.weight > 0), (neg, proj.weight < 0)):
                    signed = Projection(source=proj.source, kind=proj.kind, weight=np.where(keep, proj.weight, 0),
                                        wbits=proj.wbits, stride=proj.stride, padding=proj.padding)
                    part += reference.projection_current(signed, x, pop)
            base = reference.leak(v_prev[i], pop.leak_shift)
            yield i, t, base + neg, base + pos
            vlo, vhi = signed_range(pop.vbits)
            v = torch.clamp(potentials[(t, i)], vlo, vhi)
            if pop.kind == "lif":
                fired = torch.as_tensor(record.spikes[i][t], dtype=torch.float64)
                v = v - fired * reference.per_channel(pop.threshold, pop)
            v_prev[i] = v


@SETTINGS
@given(cases())
def test_no_input_overflows_an_accepted_accumulator(case):
    net, images, T = case
    for i, t, lo, hi in _extreme_partial_sums(net, images, T):
        alo, ahi = signed_range(net.populations[i].acc_bits)
        assert float(lo.min()) >= alo and float(hi.max()) <= ahi, (
            f"population {i} at step {t}: a partial sum reaches {float(lo.min())}..{float(hi.max())}, outside "
            f"acc_bits={net.populations[i].acc_bits}")


@st.composite
def pixel_readouts(draw):
    """input -> readout (one projection, no leak, bias 0) whose worst-case neuron sees its whole kernel."""
    c, h, w = draw(st.integers(1, 2)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    bits = draw(st.sampled_from([1, 4, 8]))
    wbits = draw(st.integers(2, 8))
    vbits = draw(st.integers(4, 12))
    pops = [Population(name="input", kind="input", shape=(c, h, w), bits=bits)]
    if draw(st.booleans()):
        k = draw(st.integers(1, min(h, w, 3)))
        cout = draw(st.integers(1, 3))
        oh, ow = h - k + 1, w - k + 1
        proj = Projection(source=0, kind="conv2d", weight=_weights(draw, (cout, c, k, k), wbits), wbits=wbits)
        shape = (cout, oh, ow)
    else:
        n = draw(st.integers(1, 5))
        proj = Projection(source=0, kind="dense", weight=_weights(draw, (n, c * h * w), wbits), wbits=wbits)
        shape = (n,)
    pops.append(Population(name="readout", kind="readout", shape=shape, vbits=vbits, leak_shift=None,
                           bias=np.zeros(shape[0], np.int64), projections=[proj]))
    net = Network(pops, time_steps=1)
    set_widths(net, 1, vbits, 48)
    return validate(net)


def _attaining_input(net: Network, sign: int) -> tuple[np.ndarray, int]:
    """The image that gives one readout neuron every weight of the given sign at full value, and that neuron's
    flat index (the neuron of the channel with the largest such sum, at position 0)."""
    pop, proj = net.populations[1], net.populations[1].projections[0]
    xmax = (1 << net.input.bits) - 1
    per = np.where(np.sign(proj.weight) == sign, proj.weight, 0).reshape(proj.weight.shape[0], -1).sum(axis=1)
    row = int(np.argmax(per * sign))
    image = np.zeros(net.input.shape, np.int64)
    if proj.kind == "dense":
        image = np.where((np.sign(proj.weight[row]) == sign).reshape(net.input.shape), xmax, 0)
        return image, row
    k = proj.weight.shape[2]
    image[:, :k, :k] = np.where(np.sign(proj.weight[row]) == sign, xmax, 0)
    return image, int(np.ravel_multi_index((row, 0, 0), pop.shape))


@SETTINGS
@given(pixel_readouts())
def test_a_refused_width_has_an_input_that_overflows_it(net):
    pop = net.populations[1]
    need = pop.acc_bits
    vlo, vhi = signed_range(pop.vbits)
    plo, phi = partial_sum_bounds(net, 1)
    assert need == required_acc_bits(net, 1)
    reached = []
    for sign, rail in ((1, vhi), (-1, vlo)):
        image, neuron = _attaining_input(net, sign)
        per_step = phi if sign > 0 else plo
        if per_step == 0:
            reached.append(rail)  # no weight of this sign: V stays 0; the bound's V term alone is vacuous here
            continue
        T = -(-abs(rail) // abs(per_step)) + 1  # enough steps to drive V to the rail, and one more
        seen = []
        reference.run(net, image[None], T, record=False,
                      observe=lambda t, i, v: seen.append(float(v.reshape(-1)[neuron])))
        # the last step's leak(V) + partial sum: V sits on the rail and every same-signed input arrives
        reached.append(seen[-1])
        assert seen[-1] == rail + per_step
    attained = signed_bits_for(int(min(min(reached), 0)), int(max(max(reached), 0)))
    if plo != 0 and phi != 0:
        assert attained == need  # the bound is reached: it is exactly wide enough
    # so the exporter's refusal of any narrower accumulator is justified by an input
    with pytest.raises(ExportError, match=f"would need a {need}-bit accumulator"):
        set_widths(net, 1, pop.vbits, need - 1)
    lo, hi = signed_range(need - 1)
    if plo != 0 and phi != 0:
        assert min(reached) < lo or max(reached) > hi


@SETTINGS
@given(networks(max_layers=1))
def test_the_partial_sum_bound_is_reached_at_the_first_step(net):
    """With V = 0 (step 0) the adversarial image reaches the partial-sum bound of a pixel-fed population whose
    worst channel sees its whole kernel (a conv whose position 0 has no padding, or a dense layer)."""
    pop = net.populations[1]
    proj = pop.projections[0]
    assume(proj.kind == "dense" or tuple(proj.padding) == (0, 0))
    plo, phi = partial_sum_bounds(net, 1)
    sums = {}
    for sign in (1, -1):
        image = _adversarial_single(net, sign)
        signed = Projection(source=0, kind=proj.kind, weight=np.where(np.sign(proj.weight) == sign, proj.weight, 0),
                            wbits=proj.wbits, stride=proj.stride, padding=proj.padding)
        current = reference.projection_current(signed, torch.as_tensor(image[None], dtype=torch.float64), pop)
        sums[sign] = float(current.max()) if sign > 0 else float(current.min())
    assert sums[1] == phi and sums[-1] == plo


def _adversarial_single(net: Network, sign: int) -> np.ndarray:
    image, _ = _attaining_input(net, sign)
    return image
