"""Experiments around spikeforge, kept out of the installed package: the training-speed race against SpikingJelly and
snnTorch (bench_train) and the archived runs (runs/: raw results, logs, the scripts that measured them, run
summaries). Run from the repository root, e.g. ``python -m bench.bench_train --width-div 4``; it uses spikeforge
through its public imports only."""
