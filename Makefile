# One virtual environment, built from nothing with the pinned CPU torch, serves every target.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# full grids: make table2 DATA_ROOT=/data/taobao DEVICE=cuda:0 SEEDS=3
DEVICE ?= cpu
DATA_ROOT ?=
SEEDS ?=
RESULTS ?= results
WORK ?= work
EXFM := $(VENV)/bin/exfm
RUN_ARGS = --work $(WORK) --results $(RESULTS) --device $(DEVICE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(SEEDS),--seeds $(SEEDS))
# `make reproduce` runs the small grids in two 1-thread lanes of about equal work (lane A: the
# TaobaoAd grids of Tables 2/4 and Figure 9; lane B: Tables 5 and 3, then Figures 12 and 10-11,
# which reuse the TaobaoAd data and FMs that lane A built first; a step being built by the other
# lane is waited for, not built twice: the artifact store's step lock)
LANE_A := $(addprefix yaml_configs/grids/smoke_,table2.yaml table4.yaml fig9.yaml)
LANE_B := $(addprefix yaml_configs/grids/smoke_,table5.yaml table3.yaml fig12.yaml fig10_11.yaml)
FULL_GRIDS := table2 table3 table4 table5 fig9 fig12 fig10_11
# the science check (docs/science.md): make reproduce's small grids with 6 seeds, Tables 2 and 4 in
# two worlds, Table 5's like task in a larger world, and one dose-response per claim (AH vs KD
# along cross-domain bias, the adapter along freshness); resumable: a stopped run continues where it was
SCIENCE := docs/science_check
# lanes balanced by the grids' measured seconds (docs/science.md): science_bias runs after
# science_table5 in lane B, by which time lane A has built the smoke_table4 world it shares
SCIENCE_A := $(addprefix yaml_configs/grids/,science_table2.yaml science_table4.yaml science_freshness.yaml)
SCIENCE_B := $(addprefix yaml_configs/grids/,science_table5.yaml science_bias.yaml)

.PHONY: install test reproduce science report bench clean $(FULL_GRIDS)

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PY) -m pip install -q -c constraints.txt -e '.[test,zk,plots]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the small version of every table and figure on the embedded synthetic data, then the report;
# the report is written even when a cell failed, and the failure is the exit status
reproduce: $(STAMP)
	status=0; \
	$(EXFM) run --threads 1 --grid $(LANE_B) --work $(WORK) --results $(RESULTS) --no-progress & lane_b=$$!; \
	$(EXFM) run --threads 1 --grid $(LANE_A) --work $(WORK) --results $(RESULTS) || status=$$?; \
	wait $$lane_b || status=$$?; \
	$(EXFM) report --records $(RESULTS) --out $(RESULTS) && exit $$status

science: $(STAMP)
	status=0; \
	$(EXFM) run --threads 1 --seeds 6 --grid $(LANE_B) $(SCIENCE_B) --work $(WORK) --results $(SCIENCE) --no-progress & lane_b=$$!; \
	$(EXFM) run --threads 1 --seeds 6 --grid $(LANE_A) $(SCIENCE_A) --work $(WORK) --results $(SCIENCE) || status=$$?; \
	wait $$lane_b || status=$$?; \
	$(EXFM) report --records $(SCIENCE)/records --out $(SCIENCE) && exit $$status

$(FULL_GRIDS): $(STAMP)
	status=0; $(EXFM) run --grid yaml_configs/grids/$@.yaml $(RUN_ARGS) || status=$$?; \
	$(EXFM) report --records $(RESULTS) --out $(RESULTS) && exit $$status

report: $(STAMP)
	$(EXFM) report --records $(RESULTS) --out $(RESULTS)

bench: $(STAMP)
	$(PY) benchmarks/perf/train_throughput.py
	$(PY) benchmarks/perf/student_overhead.py
	$(PY) benchmarks/perf/loader_throughput.py
	$(PY) benchmarks/perf/prep_throughput.py
	$(PY) benchmarks/perf/das_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(WORK)
