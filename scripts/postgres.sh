#!/usr/bin/env bash
# Makes sure the PostgreSQL server the tests use answers at 127.0.0.1:5432 (trust auth, user
# postgres), starting this machine's Debian cluster when it is installed but stopped. The tests
# run this themselves when they cannot connect; .ci/run runs it first so that a missing server
# shows as itself. With REELAY_TEST_DATABASE_URL set, the tests use that server instead and
# this script is not needed.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ready && exit 0
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "starting PostgreSQL $version (cluster main)" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 100); do
        ready && exit 0
        sleep 0.2
    done
fi
echo "PostgreSQL does not answer at 127.0.0.1:5432 and could not be started here: install it" \
     "(Debian: apt-get install postgresql) or point REELAY_TEST_DATABASE_URL at a server" >&2
exit 1
