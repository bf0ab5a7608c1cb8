# Two commands on a fresh Debian/Ubuntu machine (see README):
#   make demo   - the demo on a local lab
#   make test   - the whole test suite (unit, lab with real sshd + Prometheus, end-to-end)
# Each installs what it needs first (scripts/bootstrap.sh).

PY := .venv/bin/python
DEMO_DIR ?= /tmp/garage-lab-demo

.PHONY: deps demo test test-unit bench clean

deps:
	@bash scripts/bootstrap.sh

demo: deps
	@$(PY) -m apps.demo --dir $(DEMO_DIR) $(DEMO_ARGS)

test: deps
	@$(PY) -m pytest -q -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder --durations=40

test-unit: deps
	@$(PY) -m pytest -q -p no:cacheprovider -m "not lab and not e2e"

bench: deps
	@$(PY) -m benchmarks

clean:
	rm -rf .venv
