# The README's two commands: `make train` and `make test`. Both set up .venv first (idempotent).
# Extra arguments: make train ARGS="layer=5 tokens=1e6"   make test ARGS="-k buffer"
PYTHON := .venv/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: setup train test
setup:
	@bash scripts/setup.sh

train: setup
	$(PYTHON) -m saes.train $(ARGS)

test: setup
	$(OFFLINE) WANDB_MODE=offline PYTHONDONTWRITEBYTECODE= $(PYTHON) -m pytest $(ARGS)
