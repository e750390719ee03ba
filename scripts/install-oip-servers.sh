#!/usr/bin/env bash
# Create the virtualenv the real Open Inference Protocol servers run from (MLServer + its sklearn
# runtime, KServe's Python model server), for tests/integration/test_protocols_real.py and the
# testbed. The servers' dependencies (FastAPI, grpcio, pandas, ...) stay out of the watcher's venv.
#
#   scripts/install-oip-servers.sh            # from PyPI, keeping the wheels in $OIP_WHEELHOUSE
#   scripts/install-oip-servers.sh --offline  # only from $OIP_WHEELHOUSE (no network), e.g. in an image
#
# Measured here (2 cores, Python 3.11): download 43 s; offline venv + install 31 s; wheelhouse 119 MB
# (98 wheels), venv 680 MB.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${OIP_VENV:-$REPO/build/oip-venv}"
WHEELHOUSE="${OIP_WHEELHOUSE:-$REPO/build/oip-wheels}"
PYTHON="${PYTHON:-python3}"
# the versions tests/integration/test_protocols_real.py and the recorded answers were taken with
mapfile -t PACKAGES < <(grep -v '^#' "$REPO/testbed/servers/requirements.txt" | grep .)

offline=0
[[ "${1:-}" == "--offline" ]] && offline=1
STAMP="$VENV/.installed-$(echo "${PACKAGES[*]}" | sha256sum | cut -c1-12)"
if [[ -f "$STAMP" ]]; then
  echo "OIP servers already installed in $VENV"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip wheel 2>/dev/null || [[ $offline == 1 ]]
if [[ $offline == 0 ]]; then
  mkdir -p "$WHEELHOUSE"
  "$VENV/bin/pip" download -q -d "$WHEELHOUSE" "${PACKAGES[@]}"
  "$VENV/bin/pip" download -q -d "$WHEELHOUSE" pip  # the servers' image installs from the wheelhouse with it
fi
"$VENV/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" "${PACKAGES[@]}"
# one import per process: MLServer and KServe register the same V2 protobuf symbols and cannot share one
"$VENV/bin/python" -c "import mlserver, sklearn; print('mlserver', mlserver.__version__, 'sklearn', sklearn.__version__)"
"$VENV/bin/python" -c "import kserve; print('kserve imports')"
touch "$STAMP"
echo "OIP servers installed in $VENV (wheels in $WHEELHOUSE)"
