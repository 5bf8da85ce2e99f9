"""spikeforge.hw: the accelerator generator (Amaranth HDL), the UART and board tops, and bitstream builds.

It reads a network file (spikeforge.netimage) and never imports torch or the training code.
"""
