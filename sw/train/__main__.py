"""``python -m spikeforge.sw.train`` (and ``torchrun ... -m spikeforge.sw.train``): the command line."""

from .cli import main

main()
