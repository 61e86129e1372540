# One command for each job; see README.md.
#   make demo       the whole pipeline offline on the sample data (a few minutes on 2 CPU cores)
#   make test       the test suite
#   make pipeline   the real pipeline, e.g. on RunPod: make pipeline CONFIG=configs/kd_camembert.yaml
#   make clean      remove everything under artifacts/
# A step whose result exists is not redone; delete its folder (or make clean) to redo it.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# demo and test: the active virtual environment, else .venv (created on first use)
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := .venv/bin/python
endif
INSTALLED := $(dir $(PY)).ner-pipeline-installed
# pipeline: the pod's own Python, with its CUDA build of torch
PIPELINE_PY ?= python3
CONFIG ?= configs/kd_camembert.yaml
INPUT ?= data/phrases.txt
DEMO := artifacts/demo

.PHONY: help demo test pipeline clean

help:
	@sed -n '2,7p' Makefile

$(INSTALLED): requirements.txt
	@[ -x $(PY) ] || python3 -m venv .venv
	@# the CPU build of torch from local disk, unless a torch is already installed
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt pytest tensorboard
	@touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q tests

# --- the offline demo -------------------------------------------------------------------

demo: $(DEMO)/report.json
	@$(PY) -c "import json, evaluate; print(evaluate.format_table(json.load(open('$<'))['models']))"
	@echo "Artifacts: artifacts/demo_teacher (teacher), $(DEMO)/student (stage 1), $(DEMO)/student_pruned (stage 2),"
	@echo "           $(DEMO)/student_final (stage 3), $(DEMO)/entities.jsonl (stage 4), $< (evaluate.py)"

artifacts/demo_teacher/config.json: data/train.jsonl tools/make_demo_teacher.py | $(INSTALLED)
	$(PY) tools/make_demo_teacher.py --data data/train.jsonl --output artifacts/demo_teacher --overwrite

$(DEMO)/student/training_summary.json: artifacts/demo_teacher/config.json configs/demo.yaml
	$(PY) train_kd.py --config configs/demo.yaml --output $(DEMO)/student --overwrite

$(DEMO)/student_pruned/pruning_summary.json: $(DEMO)/student/training_summary.json
	$(PY) prune_heads.py --config configs/demo.yaml --model $(DEMO)/student --output $(DEMO)/student_pruned --overwrite

$(DEMO)/student_final/training_summary.json: $(DEMO)/student_pruned/pruning_summary.json
	$(PY) finetune_postprune.py --config configs/demo.yaml --model $(DEMO)/student_pruned \
		--output $(DEMO)/student_final --overwrite

$(DEMO)/entities.jsonl: $(DEMO)/student_final/training_summary.json data/phrases.txt
	$(PY) inference.py --model $(DEMO)/student_final --input data/phrases.txt --output $@

$(DEMO)/report.json: $(DEMO)/entities.jsonl
	$(PY) evaluate.py --config configs/demo.yaml --data data/test.jsonl --output $@ \
		--plot $(DEMO)/f1_per_type.png --model artifacts/demo_teacher --model $(DEMO)/student \
		--model $(DEMO)/student_pruned --model $(DEMO)/student_final

# --- the real pipeline (RunPod) -----------------------------------------------------------
# Stops at the first failing stage. A stage stopped by a signal resumes from its checkpoint, and
# inference from its last chunk.
# The main config writes artifacts/student_10L*; another config writes the same folders under
# artifacts/<config name>/ (e.g. artifacts/kd_camembert_compact/student_10L_final).

RUN := artifacts$(if $(filter configs/kd_camembert.yaml,$(CONFIG)),,/$(basename $(notdir $(CONFIG))))
resume_flag = $(if $(wildcard $(1).checkpoint/trainer_state.pt $(1)/checkpoint/trainer_state.pt),--resume,)

pipeline: $(RUN)/entities.jsonl
	@echo "Artifacts: $(RUN)/student_10L, $(RUN)/student_10L_pruned, $(RUN)/student_10L_final, $<"

$(RUN)/student_10L/training_summary.json: $(CONFIG)
	$(PIPELINE_PY) train_kd.py --config $(CONFIG) --output $(RUN)/student_10L \
		$(call resume_flag,$(RUN)/student_10L)

$(RUN)/student_10L_pruned/pruning_summary.json: $(RUN)/student_10L/training_summary.json
	$(PIPELINE_PY) prune_heads.py --config $(CONFIG) --model $(RUN)/student_10L --output $(RUN)/student_10L_pruned

$(RUN)/student_10L_final/training_summary.json: $(RUN)/student_10L_pruned/pruning_summary.json
	$(PIPELINE_PY) finetune_postprune.py --config $(CONFIG) --model $(RUN)/student_10L_pruned \
		--output $(RUN)/student_10L_final $(call resume_flag,$(RUN)/student_10L_final)

$(RUN)/entities.jsonl: $(RUN)/student_10L_final/training_summary.json $(INPUT)
	$(PIPELINE_PY) inference.py --model $(RUN)/student_10L_final --input $(INPUT) --output $@ \
		$(if $(wildcard $@.parts/manifest.json),--resume,)

clean:
	find artifacts -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
