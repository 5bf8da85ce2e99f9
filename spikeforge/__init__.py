"""spikeforge: train a quantized spiking network, deploy it as integers, generate a bit-exact event-driven LIF
accelerator for it and build an FPGA bitstream.

The top-level package holds what every part shares and needs no torch: the network file (``netimage``), the record
of a run and its comparator (``record``), the allocator settings (``allocator``), the board link (``host``),
random test networks (``testing``) and the command line (``cli``). Training is ``spikeforge.sw``, the gateware
``spikeforge.hw``, the Verilog simulation ``spikeforge.sim``.
"""
