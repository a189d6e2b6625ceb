# Both targets create .venv on first use and install the package with its test extras into it.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench benchmark clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m captum_fgcam.demo --out demo.png

test: $(STAMP)
	$(PY) -m ruff check captum_fgcam tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/speed.py

# The committed faithfulness tables in docs/benchmark (about 20 min on a quiet 2-core CPU).
benchmark: $(STAMP)
	$(VENV)/bin/captum-fgcam benchmark --images 500 --out docs/benchmark/scenes-vgg16bn
	$(VENV)/bin/captum-fgcam benchmark --model scenes-wall --images 100 --out docs/benchmark/scenes-wall

clean:
	rm -rf $(VENV) build *.egg-info
