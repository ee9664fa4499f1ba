#!/usr/bin/env bash
# The README's test command: install the package with its test extras, then run pytest.
# pytest's exit code 5 (no tests collected) is a failure here, as it is for CI.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev]"
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -m pytest -q "$@"
