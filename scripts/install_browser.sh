#!/usr/bin/env bash
# Make a headless Chromium/Chrome available to the tests that render HTML in a real browser
# (tests/_browser.py), installing Debian/Ubuntu's `chromium` package with apt-get when none is found.
#
# A browser is taken from SPARSEZIP_BROWSER (a path or a command name) or else from the first of
# chromium, chromium-browser, google-chrome, google-chrome-stable on PATH. If none is there and this
# runs as root (or `sudo -n` works) on a machine with apt-get, it runs apt-get update and
# apt-get install -y --no-install-recommends chromium (each bounded by SPARSEZIP_BROWSER_TIMEOUT
# seconds, default 600).
#
# It never fails the build: when no browser can be had it prints one line saying why, writes that
# line to $VENV/browser-unavailable.txt (the browser tests skip and show it) and exits 0. On success
# that file is removed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 0
VENV=${VENV:-.venv}
MARK="$VENV/browser-unavailable.txt"
TIMEOUT=${SPARSEZIP_BROWSER_TIMEOUT:-600}
NAMES=(chromium chromium-browser google-chrome google-chrome-stable)

# set $BROWSER to the browser's path and return 0, or return 1 with $WHY set when there is none
find_browser() {
  local name found
  BROWSER=
  if [ -n "${SPARSEZIP_BROWSER:-}" ]; then
    found=$(command -v -- "$SPARSEZIP_BROWSER" 2>/dev/null) || found=
    if [ -n "$found" ] && [ -f "$found" ] && [ -x "$found" ]; then
      BROWSER=$found
      return 0
    fi
    WHY="SPARSEZIP_BROWSER=$SPARSEZIP_BROWSER is not an executable file (unset it or point it at a Chromium/Chrome binary)"
    return 1
  fi
  for name in "${NAMES[@]}"; do
    found=$(command -v -- "$name" 2>/dev/null) || continue
    if [ -f "$found" ] && [ -x "$found" ]; then
      BROWSER=$found
      return 0
    fi
  done
  WHY="no Chromium/Chrome on PATH (looked for ${NAMES[*]})"
  return 1
}

ok() { # $1: the browser's path
  local version
  version=$(timeout 30 "$1" --version 2>/dev/null | head -n 1) || version=
  echo "browser for the tests: $1${version:+ ($version)}"
  rm -f -- "$MARK"
  exit 0
}

unavailable() { # $1: the one-line reason
  local line="browser tests will be skipped: $1"
  echo "$line"
  mkdir -p -- "$VENV" 2>/dev/null && printf '%s\n' "$line" >"$MARK" 2>/dev/null
  exit 0
}

# run "$@" under timeout with its output in $LOG; on failure set $WHY from the exit status
LOG=$(mktemp "${TMPDIR:-/tmp}/install_browser.XXXXXX") || LOG=/dev/null
trap '[ "$LOG" = /dev/null ] || rm -f -- "$LOG"' EXIT
quiet() { # $1: what it does (for the messages), then the command
  local what=$1 rc
  shift
  if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=30 "$TIMEOUT" "$@" >"$LOG" 2>&1
  else
    "$@" >"$LOG" 2>&1
  fi
  rc=$?
  [ "$rc" -eq 0 ] && return 0
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    WHY="$what timed out after ${TIMEOUT}s"
  else
    WHY="$what failed (exit $rc)"
  fi
  echo "$WHY; its last lines:" >&2
  tail -n 15 -- "$LOG" | sed 's/^/    /' >&2
  return 1
}

WHY=
find_browser && ok "$BROWSER"
# an explicit SPARSEZIP_BROWSER that does not work is the user's choice: do not install over it
[ -n "${SPARSEZIP_BROWSER:-}" ] && unavailable "$WHY"

if ! command -v apt-get >/dev/null 2>&1; then
  unavailable "$WHY and no apt-get to install one: install Chromium or Chrome, or set SPARSEZIP_BROWSER to its path"
fi
if [ "$(id -u)" -eq 0 ]; then
  AS_ROOT=(env)
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  AS_ROOT=(sudo -n env)
else
  unavailable "$WHY, and installing chromium with apt-get needs root or passwordless sudo: run 'sudo apt-get install chromium' or set SPARSEZIP_BROWSER"
fi

echo "no browser for the tests found; installing chromium with apt-get (this can take a few minutes)"
APT=("${AS_ROOT[@]}" DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120)
UPDATE_WHY=
if ! quiet "apt-get update" "${APT[@]}" update; then
  UPDATE_WHY="$WHY"  # the package lists already there may still do: try the install anyway
fi
if ! quiet "apt-get install chromium" "${APT[@]}" install -y --no-install-recommends chromium; then
  unavailable "$WHY${UPDATE_WHY:+ (after $UPDATE_WHY)}"
fi
find_browser && ok "$BROWSER"
unavailable "apt-get installed chromium but it is still not found: $WHY"
