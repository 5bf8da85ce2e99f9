"""spikeforge.sw: training, folding and export of spiking networks (PyTorch), and the integer reference.

A map, from the neuron up (each module imports only the ones above it):

- the neuron: ``neuron`` (LIF, surrogate gradients), ``kernels`` (compiled kernels shared by the hand-written
  autograd nodes), ``fused`` (the LIF, and BN + LIF, as one autograd node over all T steps);
- convolutions and normalization: ``event_conv`` (the event-driven C++ kernels), ``spike_conv`` (convs whose input
  is spikes), ``folding`` (BN into integer thresholds and biases), ``bn`` (the BN kinds of the paper);
- models: ``model`` (the chain), ``resnet`` and ``resnet_fold`` (spiking ResNets), ``config`` (TrainConfig),
  ``models`` (the model a config or a checkpoint names);
- data: ``data`` (datasets by name: MNIST-style IDX sets in ``data.idx``, CIFAR and Imagenette in ``data.vision``);
- deployment: ``reference`` (docs/semantics.md in PyTorch), ``export`` (model -> network file);
- training: ``gradflow`` (surrogate width vs gradient flow), ``train`` (the schedule, ``spikeforge train``),
  ``results`` (docs/results.md from finished runs).

Importing it changes nothing process-wide: the allocator options are ``spikeforge train --huge-pages`` and
``--malloc-cache`` (spikeforge.allocator).
"""
