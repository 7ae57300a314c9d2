#!/usr/bin/env bash
# What the PostgreSQL store's one-event append statement costs, part by part.
#
# Makes a scratch schema `annals_append_cost` with the store's migrations and 2,000 streams
# at version 1, anew for each round. Then it runs variants of the direct path's one-event append
# (store-postgres/src/single.rs) under pgbench, one client, `-M prepared`. For each it prints
# the transactions a second, the latency, and the CPU of all postgres processes a transaction
# (from /proc, Linux only). Each variant runs with `synchronous_commit` on and off. The schema
# is dropped at the end. store-postgres/PERFORMANCE.md ("The version check is what the append
# pays for") reads these figures.
#
#   benches/sql/append-cost.sh [seconds per run, default 5] [rounds, default 2]
#
# Needs psql and pgbench, and the rights to create a schema. The server is PostgreSQL at
# DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test. The CPU figure counts every
# postgres process on this machine, so run it on a quiet one.
set -euo pipefail
cd "$(dirname "$0")/../.."

url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
seconds=${1:-5}
rounds=${2:-2}
schema=annals_append_cost
work=$(mktemp -d)
psql_q() { psql "$url" -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
    psql_q -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# A fresh schema for each round: the variants that do not keep `streams` leave it behind
# the events, where the store's statement would then meet taken versions.
setup() {
    psql_q -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema" 2>/dev/null
    for migration in store-postgres/migrations/*.sql; do
        PGOPTIONS="-c search_path=$schema" psql_q -f "$migration" >/dev/null
    done
    PGOPTIONS="-c search_path=$schema" psql_q \
        -c "INSERT INTO streams SELECT 's' || i, 1 FROM generate_series(1, 2000) i" \
        -c "INSERT INTO events (tx, stream_id, stream_version, event_id, event_type,
                                schema_version, payload)
            SELECT 1, 's' || i, 1, gen_random_uuid(), 'Deposited', 1, '{}'
              FROM generate_series(1, 2000) i" \
        -c "VACUUM ANALYZE events" -c "VACUUM ANALYZE streams"
}

payload='{"account":"acc-000001","amount":1234,"note":"deposit number 1 of the benchmark workload, padded to about two hundred bytes of json text"}'
metadata='{"correlation_id":"0d6f1d1e-9b4a-4c0f-8f0c-3b3f1c2d4e5f"}'
insert="INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)"
values="gen_random_uuid(), 'Deposited', 1, '$payload', '$metadata'"
returning="RETURNING stream_version, sequence, tx"
locks="g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))), l AS (SELECT pg_advisory_xact_lock(stream_lock_key('s' || :n)) FROM g)"
# A version no stream holds, for the variants that read none: the key never refuses it.
fresh="1000000 + (random() * 1e12)::bigint"
newest="(SELECT stream_version FROM events WHERE stream_id = 's' || :n ORDER BY stream_version DESC LIMIT 1)"

variant() {
    printf '\\set n random(1, 2000)\n%s;\n' "$2" >"$work/$1.sql"
    names+=("$1")
}
names=()
# `store` is the store's statement before migration 0007. Since then, `locks-newest-event` is
# its statement for a version it has not seen, and `locks-no-read` the one for a version it has.
variant store "WITH $locks, s AS (UPDATE streams SET version = version + 1 FROM l WHERE stream_id = 's' || :n RETURNING version) $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant streams-no-locks "WITH s AS (UPDATE streams SET version = version + 1 WHERE stream_id = 's' || :n RETURNING version) $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant locks-newest-event "WITH $locks, s AS (SELECT coalesce($newest, 0) + 1 AS version FROM l) $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant locks-no-read "WITH $locks, s AS (SELECT $fresh AS version FROM l) $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant no-locks-no-read "WITH s AS (SELECT $fresh AS version) $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant fixed-row-read "WITH s AS (SELECT version + $fresh AS version FROM streams WHERE stream_id = 's1') $insert SELECT pg_current_xact_id()::text::bigint, 's' || :n, s.version, $values FROM s $returning"
variant plain-insert "$insert VALUES (pg_current_xact_id()::text::bigint, 's' || :n, $fresh, $values) $returning"

# CPU ticks of all postgres processes, their reaped children included (a pgbench backend
# exits before the second reading; the postmaster's cutime and cstime then hold it).
ticks() {
    local total=0 pid
    for pid in $(pgrep -x postgres); do
        total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

printf '%-20s %-5s %9s %12s %16s\n' variant sync tps latency "server CPU/tx"
for round in $(seq "$rounds"); do
    setup
    for name in "${names[@]}"; do
        for sync in on off; do
            before=$(ticks)
            out=$(PGOPTIONS="-c search_path=$schema -c synchronous_commit=$sync" \
                pgbench "$url" -n -M prepared -c 1 -T "$seconds" -f "$work/$name.sql" 2>&1)
            after=$(ticks)
            n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
            if [ -z "$n" ] || [ "$n" -eq 0 ]; then
                echo "$name: pgbench failed:" >&2
                tail -5 <<<"$out" >&2
                exit 1
            fi
            tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
            latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
            cpu=$(awk -v d="$((after - before))" -v n="$n" -v hz="$hz" \
                'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
            printf '%-20s %-5s %9.0f %9.0f µs %13s µs\n' "$name" "$sync" "$tps" \
                "$(awk -v l="$latency" 'BEGIN { print l * 1000 }')" "$cpu"
        done
    done
done
