# Two commands on a fresh machine:
#   make quickstart   set up .venv and run the central experiment (clean vs S3, n = 3, MNIST)
#   make test         set up .venv and run the test suite
# RSC_DATA_DIR must point at a dataset root in torchvision's layout (CI: ../shared/data).
PYTHON ?= python3
# Use the canonical copy beside the checkout when there is one (it is what CI reads).
RSC_DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST),$(abspath ../shared/data),)
export RSC_DATA_DIR
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e '.[test,dp,dask,slurm,influence,timm]'
	touch $(STAMP)

.PHONY: setup quickstart test
setup: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/rsc quickstart --download

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests
