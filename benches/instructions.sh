#!/usr/bin/env bash
# Instructions per request: how much user-space work the gateway does for one signed-in
# HTTP/1.1 request, counted by valgrind's callgrind instead of timed. Counts barely move
# on a busy or shared machine (rounds agree within about 0.2%), so two builds can be
# compared where requests/s cannot.
#
#   benches/instructions.sh [GATEWAY_BINARY...]
#
# ROW names the hold's row to load (default `ssogate, signed in`; `ssogate, signed in +
# assertion` is the gateway with the signed identity assertion on). BROWSER=1 sends a
# browser's request headers too (wrk alone sends only `Host` and the cookie). KEEP=DIR
# keeps each binary's last dump there, for `callgrind_annotate`.
# Each binary (default: target/release/ssogate) runs under callgrind behind the load
# bench's `--hold signed` setup (nginx upstream, development provider, a real login).
# After a warm-up the counters are zeroed, wrk sends requests for 10 s on 4 connections,
# and the count is dumped; three rounds per binary. Needs valgrind, wrk, nginx, h2load
# (`apt-get install valgrind wrk nginx nghttp2-client`) and `cargo bench --bench load
# --no-run` built.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=$(ls -t target/release/deps/load-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[[ -x $bench ]] || { echo "build the load bench first: cargo bench --bench load --no-run" >&2; exit 1; }
binaries=("$@")
[[ ${#binaries[@]} -gt 0 ]] || binaries=(target/release/ssogate)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

for binary in "${binaries[@]}"; do
  binary=$(realpath "$binary")
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/cg.%%p %s "$@"\n' \
    "$work" "$binary" >"$work/gateway.sh"
  chmod +x "$work/gateway.sh"
  mkfifo "$work/stdin"
  BENCH_GATEWAY_BINARY="$work/gateway.sh" "$bench" --bench --hold signed \
    <"$work/stdin" >"$work/hold.out" 2>&1 &
  exec 3>"$work/stdin" # keeps the hold waiting until closed
  for _ in $(seq 600); do grep -q '^holding' "$work/hold.out" && break; sleep 1; done
  grep -q '^holding' "$work/hold.out" || { cat "$work/hold.out" >&2; exit 1; }
  case ${ROW:-} in
    *assertion*) server='ssogate (assertion)' ;;
    *) server='ssogate' ;;
  esac
  pid=$(grep -F "$server: pid" "$work/hold.out" | awk '{print $NF}')
  line=$(grep -F "${ROW:-ssogate, signed in} (HTTP/1.1):" "$work/hold.out")
  url=${line##* }
  cookie=$(grep -o "Cookie: [^']*" <<<"$line")
  headers=(-H "$cookie")
  [[ -z ${BROWSER:-} ]] || headers+=(
    -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'
    -H 'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'
    -H 'Accept-Language: en-US,en;q=0.9' -H 'Accept-Encoding: gzip, deflate, br, zstd'
    -H 'Referer: https://sentry.example.com/organizations/acme/issues/'
    -H 'Sec-Fetch-Dest: document' -H 'Sec-Fetch-Mode: navigate' -H 'Sec-Fetch-Site: same-origin'
    -H 'Sec-Fetch-User: ?1' -H 'Upgrade-Insecure-Requests: 1' -H 'Priority: u=0, i'
    -H 'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"' -H 'sec-ch-ua-mobile: ?0'
    -H 'sec-ch-ua-platform: "Linux"'
  )
  wrk -t1 -c4 -d3s "${headers[@]}" "$url" >/dev/null # warm-up
  for round in 1 2 3; do
    callgrind_control -z "$pid" >/dev/null 2>&1
    requests=$(wrk -t1 -c4 -d10s "${headers[@]}" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    dump=$(ls -t "$work"/cg."$pid".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    echo "$binary round $round: $requests requests, $((total / requests)) instructions per request"
  done
  [[ -z ${KEEP:-} ]] || { mkdir -p "$KEEP"; cp "$dump" "$KEEP/$(basename "$binary").callgrind"; }
  exec 3>&- # Enter for the hold: it stops its servers
  wait
  rm -f "$work/stdin" "$work"/cg.*
done
