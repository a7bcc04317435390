#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests.
# First installs the real peers some tests drive (sentry-sdk from PyPI, @sentry/cli,
# oidc-provider and playwright-core from npm, Debian's chromium): see
# tests/install-peers.sh. Then the browser suite runs against the binary cargo built,
# and last the Debian package is built from a release build, installed and purged
# (tests/package.sh).
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
echo "== e2e (oidc-provider + headless chromium)"
SSOGATE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/ssogate" node --test tests/e2e/
echo "== package (the .deb: lintian, dpkg -i, ssogate check, systemd-analyze verify, purge)"
bash tests/package.sh
