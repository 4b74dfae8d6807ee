# Sourced by demo.sh and test.sh: create .venv at the repository root (once) and install jaxedit.
# EXTRAS selects optional dependency groups, e.g. EXTRAS="test,parity".
# pip's output goes to .venv/install.log (JAXEDIT_VERBOSE=1: to the terminal as well); when pip
# fails, the end of the log is shown and the calling script exits with pip's status.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LOG="$VENV/install.log"

_jaxedit_pip() {  # pip "$@", its output appended to $LOG
  local rc=0
  echo "\$ pip $*" >>"$LOG"
  if [ "${JAXEDIT_VERBOSE:-0}" != 0 ]; then
    "$PY" -m pip "$@" 2>&1 | tee -a "$LOG" || rc=$?
  else
    "$PY" -m pip "$@" >>"$LOG" 2>&1 || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "[jaxedit] pip $* failed (exit status $rc); the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit "$rc"
  fi
}

_jaxedit_new_venv=0
if [ ! -x "$PY" ]; then
  echo "[jaxedit] creating virtual environment at $VENV"
  python3 -m venv "$VENV"
  _jaxedit_new_venv=1
  : >"$LOG"  # the log holds the latest setup only
  _jaxedit_pip install -q --upgrade pip
fi
STAMP="$VENV/.jaxedit-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  [ "$_jaxedit_new_venv" = 1 ] || : >"$LOG"
  echo "[jaxedit] installing jaxedit${EXTRAS:+[$EXTRAS]} into $VENV (pip's output: $LOG)"
  _jaxedit_pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  if ! "$PY" -c "import jaxedit" >>"$LOG" 2>&1; then
    echo "[jaxedit] the installed jaxedit does not import; the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  touch "$STAMP"
fi
cd "$ROOT"
