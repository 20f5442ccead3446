# Two commands: `make demo` (set up, train the default model on shapes, sample, judge) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch where there is no NVIDIA GPU (small, and on this machine's disk); the
# regular (CUDA) build where there is one.
TORCH := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch>=2.6"; else echo "torch==2.13.0"; fi)

EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

.PHONY: demo test setup fonts browser clean bench

$(BIN)/dreamlet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/dreamlet

setup: $(BIN)/dreamlet fonts

# The emoji set draws Debian's Noto Color Emoji font: installed where we may (root or sudo without a
# password, with apt); otherwise one line says how, and everything else still works.
fonts:
	@test -f $(EMOJI_FONT) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then APT="apt-get"; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then APT="sudo -n apt-get"; fi; \
	  if [ -n "$$APT" ]; then $$APT install -y -q fonts-noto-color-emoji >/dev/null 2>&1 || \
	    { $$APT update -q >/dev/null 2>&1 && $$APT install -y -q fonts-noto-color-emoji >/dev/null 2>&1; }; fi; \
	  test -f $(EMOJI_FONT) || echo "note: --data emoji needs the Noto Color Emoji font: sudo apt-get install fonts-noto-color-emoji"; }

# The web UI's browser test drives Debian's headless Chromium: installed where we may, as the font is;
# elsewhere that one test is skipped and says so.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then APT="apt-get"; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then APT="sudo -n apt-get"; fi; \
	  if [ -n "$$APT" ]; then $$APT install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { $$APT update -q >/dev/null 2>&1 && $$APT install -y -q chromium chromium-driver >/dev/null 2>&1; }; fi; \
	  command -v chromedriver >/dev/null || echo "note: the web UI's browser test needs Chromium: sudo apt-get install chromium chromium-driver"; }

demo: setup
	$(BIN)/dreamlet demo

test: setup browser
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/time_to_accuracy.py

clean:
	rm -rf $(VENV) runs
