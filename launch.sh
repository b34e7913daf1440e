#!/usr/bin/env bash
# Double-click or run: sets up .venv (first time, and again when requirements change),
# then opens the GUI. `./launch.sh test` runs the test suite instead.
# Extra arguments go to gui.py (e.g. --port 7861 --no-browser) or to pytest.
#
# Environment:
#   PYTHON            the Python to build .venv with (3.11 or newer; default: python3.12/3.11/python3)
#   TORCH_INDEX_URL   where torch comes from, e.g. https://download.pytorch.org/whl/cu128 for an
#                     NVIDIA GPU build; unset = pip's own configuration (the CPU build on PyPI-only setups)
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
VENV=.venv

mode=gui
if [ "${1:-}" = "test" ]; then
  mode=test
  shift
fi

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (none found). Install it, or set PYTHON=/path/to/python3.11." >&2
  exit 2
}

if [ ! -x "$VENV/bin/python" ]; then
  python=$(find_python)
  echo "Creating $VENV with $python ..."
  "$python" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# Install a requirements file only when it (or the torch source) changed since the last install.
install_if_changed() {
  local file=$1 stamp="$VENV/.installed-$1"
  local want
  want="$(cat "$file") torch=$TORCH_VERSION index=${TORCH_INDEX_URL:-}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "Installing $file into $VENV (first run or requirements changed) ..."
  if [ "$file" = requirements.txt ]; then
    # torch first and pinned, so nothing later can swap in another (multi-GB) build.
    "${pip[@]}" "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
  "${pip[@]}" -r "$file" "torch==$TORCH_VERSION"
  printf '%s' "$want" >"$stamp"
}

install_if_changed requirements.txt
if [ "$mode" = test ]; then
  install_if_changed requirements-test.txt
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" gui.py "$@"
