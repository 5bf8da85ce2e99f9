"""``python -m spikeforge.sw.export``: the command line of ``spikeforge export``."""

from . import main

main()
