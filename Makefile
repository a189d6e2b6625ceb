# Both targets create .venv on first use and install the package with its test extras into it.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint bench benchmark faithfulness transformer tasks figures clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m captum_fgcam.demo --out demo.png

test: $(STAMP)
	$(PY) -m ruff check captum_fgcam tests benchmarks docs
	$(PY) -m pytest -q

# docs/api.md, the API reference, from the public names' docstrings (tests/test_docs.py fails
# while the committed file differs from what this writes).
docs: $(STAMP)
	$(PY) docs/generate_api.py

bench: $(STAMP)
	$(PY) benchmarks/speed.py

# The committed faithfulness tables in docs/benchmark (about 20 min on a quiet 2-core CPU), and
# the seed papers' and rivals' methods on the plain, interpretable-gradient and fc-wall models.
RIVALS := Grad-CAM HiResCAM FG-Grad-CAM FG-HiResCAM FG-Grad-CAM-D Layer-CAM RefineCAM \
  Conceptor-CAM FG-Conceptor-CAM "Guided Grad-CAM" "Guided FG-Grad-CAM" LRP
benchmark: $(STAMP)
	$(VENV)/bin/captum-fgcam benchmark --images 500 --out docs/benchmark/scenes-vgg16bn
	$(VENV)/bin/captum-fgcam benchmark --model scenes-wall --images 100 --out docs/benchmark/scenes-wall
	mkdir -p docs/benchmark/rivals
	for m in scenes-vgg16bn scenes-vgg16bn-ig scenes-fc-wall; do \
	  $(VENV)/bin/captum-fgcam benchmark --model $$m --images 100 --methods $(RIVALS) \
	    --no-progress --out docs/benchmark/rivals/$$m; done

# The faithfulness issue's tables: every zoo model (and the hard model on the held-out
# generator) under the paper's substrate and RISE's, then the goal check (summary.md).
FAITHFUL := Grad-CAM Score-CAM Layer-CAM HiResCAM RefineCAM FG-Grad-CAM FG-Grad-CAM-D \
  FG-Grad-CAM-DM LRP CLRP SGLRP
ZOO := scenes-vgg16bn scenes-resnet scenes-vgg16bn-ig scenes-fc-wall scenes-wall scenes-hard
faithfulness: $(STAMP)
	mkdir -p docs/benchmark/faithfulness/paper docs/benchmark/faithfulness/rise
	for m in $(ZOO) scenes-hard@held-out; do \
	  style=$$(case $$m in *@held-out) echo --style held-out;; esac); \
	  model=$${m%@held-out}; out=$$(echo $$m | sed 's/@/-/'); \
	  $(VENV)/bin/captum-fgcam benchmark --model $$model $$style --images 100 \
	    --methods $(FAITHFUL) --no-progress --out docs/benchmark/faithfulness/paper/$$out; \
	  $(VENV)/bin/captum-fgcam benchmark --model $$model $$style --images 100 --blur 11 5 \
	    --methods $(FAITHFUL) --no-progress --out docs/benchmark/faithfulness/rise/$$out; \
	done
	$(PY) benchmarks/faithfulness.py

# The tasks' tables: the zoo's segmenter and detector, the peers' recipes beside FG-CAM, under
# the paper's substrate and RISE's (about 60 min on a quiet 2-core CPU).
TASK_METHODS := Grad-CAM HiResCAM Layer-CAM FG-Grad-CAM FG-HiResCAM FG-Layer-CAM
tasks: $(STAMP)
	mkdir -p docs/benchmark/tasks/paper docs/benchmark/tasks/rise
	for m in scenes-seg scenes-det; do \
	  lrp=$$(case $$m in scenes-seg) echo LRP;; esac); \
	  $(VENV)/bin/captum-fgcam benchmark --model $$m --images 30 --methods $(TASK_METHODS) \
	    $$lrp --no-progress --out docs/benchmark/tasks/paper/$$m; \
	  $(VENV)/bin/captum-fgcam benchmark --model $$m --images 30 --blur 11 5 \
	    --methods $(TASK_METHODS) $$lrp --no-progress --out docs/benchmark/tasks/rise/$$m; \
	done

# The transformer comparison (docs/transformers.md): the zoo's ViT and Swin, every stage and the
# pixels, both substrates, FG-CAM against AttnLRP (LXT), HiLRP, rollout, Chefer, LeGrad (peers
# installed here as test-only extras; about 40 min), then the diagnosis (about 20 min).
transformer: $(STAMP)
	$(PY) -m pip install --quiet --no-deps lxt==2.1
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python hilrp==0.2.0
	for m in scenes-vit scenes-swin; do \
	  $(PY) benchmarks/transformer_comparison.py --model $$m --images 50 || exit 1; \
	  $(PY) benchmarks/transformer_diagnosis.py --model $$m --images 50 \
	    > docs/benchmark/transformer/$$m/diagnosis.md || exit 1; \
	done

# The figures in docs/ (README, docs/command-line.md): the demo and three explain figures of one
# held-out scene.
EXPLAIN := $(VENV)/bin/captum-fgcam explain docs/explain/scene.png --model scenes-vgg16bn --no-progress
figures: $(STAMP)
	$(PY) -m captum_fgcam.demo --out docs/demo.png
	$(EXPLAIN) --out docs/explain/one-method.png
	$(EXPLAIN) --out docs/explain/seven-methods.png --method grad-cam --method score-cam \
	  --method layer-cam --method fg-grad-cam --method fg-grad-cam-d --method fg-score-cam \
	  --method lrp --layer features.43 --layer features.33 --layer features.23 \
	  --layer features.13 --layer input --scale method
	$(EXPLAIN) --out docs/explain/signed.png --sign all --method fg-grad-cam \
	  --method fg-grad-cam-d --method clrp --layer features.23 --layer input
	for task in segmentation detection; do \
	  $(VENV)/bin/captum-fgcam explain docs/explain/scene-pair.png --task $$task \
	    --model $$(case $$task in segmentation) echo scenes-seg;; *) echo scenes-det;; esac) \
	    --method grad-cam --method layer-cam --method fg-grad-cam --method fg-layer-cam \
	    --out docs/explain/$$task.png --no-progress; done

clean:
	rm -rf $(VENV) build *.egg-info
