#!/usr/bin/env bash
# Set up the Python virtual environment for the example Cog model (examples/cog/).
#
#   scripts/cog-venv.sh          # from any directory
#
# Creates target/cog-venv (under the repo root, git-ignored) with `python3 -m venv` and installs
# the pinned packages of examples/cog/requirements.txt (cog + coglet, numpy, imageio,
# imageio-ffmpeg, Pillow). Idempotent: a stamp file records the hash of the requirements and
# the Python used; when it matches, the script exits at once and prints nothing. Concurrent runs
# are serialised with flock on "$COG_VENV.lock".
# Any failure exits non-zero with a message on stderr, and leaves no stamp behind.
#
# Environment: PYTHON (default python3) picks the interpreter; COG_VENV overrides the venv path.
# Afterwards put "$COG_VENV/bin" first on PATH before starting the model server: coglet starts
# a plain `python` subprocess for the predictor (see examples/cog/README.md).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$repo_root/examples/cog/requirements.txt"
venv="${COG_VENV:-$repo_root/target/cog-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.reelay-cog-venv.stamp"

fail() {
    echo "cog-venv: error: $*" >&2
    exit 1
}

[[ -f "$requirements" ]] || fail "missing $requirements"
command -v "$python" >/dev/null 2>&1 || fail "'$python' not found on PATH (set PYTHON=...)"

hash_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
    else "$python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
    fi
}
# The stamp covers the requirements and the interpreter version (a new Python needs a new venv).
want="$( { cat "$requirements"; "$python" -c 'import sys; print(sys.version)'; } | hash_of )"

ready() { [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; }
ready && exit 0

# Several test processes may call this at once: one installs, the others wait for it.
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9 || fail "could not lock $venv.lock"
    ready && exit 0
fi

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || fail "$python is $("$python" --version 2>&1); cog needs Python >= 3.10"

echo "cog-venv: setting up $venv (from examples/cog/requirements.txt)" >&2
rm -f "$stamp"
py_version() { "$1" -c 'import sys; print(sys.version)' 2>/dev/null; }
if [[ -d "$venv" && "$(py_version "$venv/bin/python")" != "$(py_version "$python")" ]]; then
    rm -rf "$venv"   # a broken leftover, or made by another Python
fi
if [[ ! -d "$venv" ]]; then
    "$python" -m venv "$venv" || fail "'$python -m venv $venv' failed (on Debian: apt-get install python3-venv)"
fi

log="$venv/pip-install.log"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
        -r "$requirements" >"$log" 2>&1; then
    cat "$log" >&2
    fail "pip install -r $requirements failed (log above, also in $log)"
fi

# Check that what the example needs actually imports, and that the bundled ffmpeg runs.
if ! "$venv/bin/python" - >>"$log" 2>&1 <<'PY'
import subprocess
import coglet, cog, numpy, imageio, imageio_ffmpeg, PIL  # noqa: F401
subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-version"],
               check=True, stdout=subprocess.DEVNULL)
PY
then
    cat "$log" >&2
    fail "the venv was installed but its packages do not import or ffmpeg does not run (see $log)"
fi

echo "$want" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "cog-venv: ready: $venv" >&2
