#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests.
# First installs the real peers some tests drive (sentry-sdk from PyPI, @sentry/cli
# from npm), which needs python3 and npm; the rest runs in-process.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== peers"
bash tests/install-peers.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
