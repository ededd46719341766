#!/usr/bin/env bash
# The proxy's cost, roughly: one replica served directly vs behind Ray Serve (--replicas 1 --address on a
# one-node Ray), ember bench at 1 and 32 streams. Leaves the Ray head of /tmp/ember-px/ray running: stop it
# with `ember cluster down` (every Ray process of this user) or by its pids. Run from /tmp/ember-px.
set -u
E="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/ember"
B="--model smollm2-135m-instruct --prompt-tokens 64 --max-tokens 64 --no-progress"
OMP_NUM_THREADS=1 $E serve --port 18600 --kv-cache-mb 64 --data-dir /tmp/ember-px/d1 > /tmp/ember-px/direct.log 2>&1 &
P=$!
for i in $(seq 1 60); do curl -sf localhost:18600/health >/dev/null && break; sleep 1; done
echo "== direct c=1"; $E bench --url http://127.0.0.1:18600 $B -c 1 -n 6 2>&1 | tail -6
echo "== direct c=32"; $E bench --url http://127.0.0.1:18600 $B -c 32 -n 64 2>&1 | tail -6
kill -TERM $P; wait $P
$E cluster up --head --port 6395 --node-ip 127.0.0.1 --num-cpus 1 --temp-dir /tmp/ember-px/ray > /dev/null 2>&1
$E serve --replicas 1 --address 127.0.0.1:6395 --port 18601 --kv-cache-mb 64 --data-dir /tmp/ember-px/d2 --threads-per-replica 1 --no-pin-threads > /tmp/ember-px/serve.log 2>&1 &
P=$!
for i in $(seq 1 120); do curl -sf localhost:18601/health >/dev/null && break; sleep 1; done
echo "== serve c=1"; $E bench --url http://127.0.0.1:18601 $B -c 1 -n 6 2>&1 | tail -6
echo "== serve c=32"; $E bench --url http://127.0.0.1:18601 $B -c 32 -n 64 2>&1 | tail -6
kill -TERM $P; wait $P
