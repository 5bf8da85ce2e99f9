"""A tiny exported spiking ResNet (sw/resnet.py's resnet8, untrained) runs bit-exact through the accelerator.

This is the one hardware test that builds its network with the training code: sw/export_resnet.py deploys every
residual join as one population with two projections (the main 3x3 conv and the identity-as-diagonal-1x1 or the
strided 1x1 shortcut), exactly what the generator's joins must handle. The comparison is against sw/reference.py,
as everywhere; the float model is not involved beyond the export.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from spikeforge.sw.export import export_resnet
from spikeforge.sw.resnet import lif_neuron, resnet8
from hw_helpers import assert_rtl_matches_reference

T = 4


def tiny_exported_resnet8(leak_shift=None):
    """resnet8 at width 1/8 (2-4-8 channels), 4-bit weights, 8x8 input: BN statistics from one batch of random
    images, then every BN shifted up by 0.5 so that an untrained network spikes in every population."""
    torch.manual_seed(0)
    model = resnet8(width=0.125, num_classes=3, wbits=4, stem_wbits=4, time_steps=T,
                    neuron=lif_neuron(leak_shift=leak_shift))
    with torch.no_grad():
        model.train()
        model(torch.rand(8, 1, 8, 8))
        model.eval()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.bias.add_(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the widened-shortcut note
        return export_resnet(model, input_shape=(1, 8, 8), time_steps=T)


@pytest.mark.parametrize("leak_shift", [None, 3])
def test_exported_resnet8_is_bit_exact(leak_shift):
    net = tiny_exported_resnet8(leak_shift)
    joins = [pop for pop in net.populations if len(pop.projections) == 2]
    assert [pop.name for pop in joins] == ["layer1.0", "layer2.0", "layer3.0"]
    assert joins[1].projections[1].kernel == (1, 1) and joins[1].projections[1].stride == (2, 2)
    image = np.random.default_rng(leak_shift or 0).integers(0, 256, size=(1, 1, 8, 8)).astype(np.uint8)
    rtl, ref = assert_rtl_matches_reference(net, image, T)
    counts = ref.spike_counts()[1:-1]
    assert min(counts) > 0, f"a population is silent ({counts}): a weak test"


def test_exported_resnet8_with_membranes_in_spram_is_bit_exact():
    """The stem, a block's conv1 and two joins (identity and strided shortcut) as half-rate units: the same spikes,
    and the cycle model still equals the RTL."""
    from spikeforge.hw.accelerator import LanePlan

    net = tiny_exported_resnet8()
    spram = {p for p, pop in enumerate(net.populations) if pop.name in ("stem", "layer1.0.conv1", "layer1.0",
                                                                         "layer2.0")}
    assert len(spram) == 4
    image = np.random.default_rng(0).integers(0, 256, size=(1, 1, 8, 8)).astype(np.uint8)
    assert_rtl_matches_reference(net, image, T, lanes=LanePlan({}, spram=spram))
