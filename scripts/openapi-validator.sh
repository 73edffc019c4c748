#!/usr/bin/env bash
# Set up openapi-spec-validator (PyPI), which the OpenAPI test runs on /openapi.json.
#
#   scripts/openapi-validator.sh                  # set up (or check) the venv, print nothing
#   scripts/openapi-validator.sh doc.json ...     # set up, then validate the files
#
# Creates target/openapi-venv (under the repo root, git-ignored) with `python3 -m venv` and
# installs the pinned openapi-spec-validator. Idempotent: a stamp file records the pin and the
# Python used; when it matches, setting up does nothing. Concurrent runs are serialised with
# flock on "$OPENAPI_VENV.lock". Any failure exits non-zero with a message on stderr, and leaves
# no stamp behind.
#
# Environment: PYTHON (default python3) picks the interpreter; OPENAPI_VENV overrides the path.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OPENAPI_VENV:-$repo_root/target/openapi-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.reelay-openapi-venv.stamp"
package="openapi-spec-validator==0.9.0"

fail() {
    echo "openapi-validator: error: $*" >&2
    exit 1
}

command -v "$python" >/dev/null 2>&1 || fail "'$python' not found on PATH (set PYTHON=...)"
want="$package $("$python" -c 'import sys; print(sys.version)' | tr '\n' ' ')"

ready() { [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/openapi-spec-validator" ]]; }

if ! ready; then
    # Several test processes may call this at once: one installs, the others wait for it.
    mkdir -p "$(dirname "$venv")"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv.lock"
        flock 9 || fail "could not lock $venv.lock"
    fi
    if ! ready; then
        echo "openapi-validator: setting up $venv ($package)" >&2
        rm -f "$stamp"
        py_version() { "$1" -c 'import sys; print(sys.version)' 2>/dev/null; }
        if [[ -d "$venv" && "$(py_version "$venv/bin/python")" != "$(py_version "$python")" ]]; then
            rm -rf "$venv"   # a broken leftover, or made by another Python
        fi
        if [[ ! -d "$venv" ]]; then
            "$python" -m venv "$venv" \
                || fail "'$python -m venv $venv' failed (on Debian: apt-get install python3-venv)"
        fi
        log="$venv/pip-install.log"
        if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
                "$package" >"$log" 2>&1; then
            cat "$log" >&2
            fail "pip install $package failed (log above, also in $log)"
        fi
        "$venv/bin/openapi-spec-validator" --help >/dev/null 2>&1 \
            || fail "openapi-spec-validator was installed but does not run (see $log)"
        echo "$want" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
        echo "openapi-validator: ready: $venv" >&2
    fi
fi

if [[ $# -gt 0 ]]; then
    # --schema 3.1: judged as OpenAPI 3.1 whatever the document claims to be.
    exec "$venv/bin/openapi-spec-validator" --schema 3.1 --validation-errors all "$@"
fi
