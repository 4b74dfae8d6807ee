# Sourced by demo.sh and test.sh: create .venv at the repository root (once) and install jaxedit.
# EXTRAS selects optional dependency groups, e.g. EXTRAS="test,parity".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "[jaxedit] creating virtual environment at $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.jaxedit-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[jaxedit] installing jaxedit${EXTRAS:+[$EXTRAS]} into $VENV"
  "$PY" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import jaxedit" && touch "$STAMP"
fi
cd "$ROOT"
