#!/usr/bin/env bash
# The README's test command: install the package with its test extras and Debian's
# chromium (for the browser test of the app; skipped with a reason where it cannot be
# installed), then run pytest. pytest's exit code 5 (no tests collected) fails here.
#
#   bash scripts/test.sh          the default suite: every test not marked slow
#                                 (under 10 minutes on 2 cores)
#   bash scripts/test.sh --all    slow tests too (the 20-variant export sweep, the live
#                                 Ray Serve server, the official golden logits, the demo
#                                 end to end): what CI runs (.ci/run), about 30 minutes
#                                 on 2 cores of an AMD EPYC
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=(-m "not slow")
if [[ "${1:-}" == "--all" ]]; then
    marker=()
    shift
fi
python -m pip install -q -e ".[dev]"
bash scripts/install_chromium.sh || true
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
python -m pytest -q "${marker[@]}" "$@"
