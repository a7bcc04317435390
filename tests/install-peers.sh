#!/usr/bin/env bash
# Installs the real peers the tests drive:
#   - sentry-sdk, and PyJWT with cryptography (the upstream's verifier of the identity
#     assertion), from PyPI (tests/peers/requirements.txt) into target/peers/venv
#   - @sentry/cli from npm (tests/peers/package-lock.json) into tests/peers/node_modules
#     (both for tests/it/support/sentry_clients.rs; versions in tests/peers/README.md)
#   - oidc-provider and playwright-core from npm (tests/e2e/package-lock.json) into
#     tests/e2e/node_modules, and Debian's chromium, for the browser tests in tests/e2e
#   - Debian's redis-server, which tests/it/replicas.rs starts on free loopback ports
#   - Debian's testssl.sh, which tests/it/tls_grade.rs runs against the listener
#   - Debian's nginx, which tests/it/nginx_front.rs runs with config/nginx/ in front
#   - Debian's pebble and pebble-challtestsrv, the ACME CA tests/it/acme.rs orders from
# Idempotent: a step is skipped while its stamp (a hash of its inputs) still matches.
# Needs python3 with pip, node and npm, and root (or chromium, redis-server, testssl.sh,
# nginx and pebble already installed);
# reaches only PyPI, the npm registry and Debian's archive.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="$root/tests/peers"
venv="$root/target/peers/venv"

hash() { sha256sum | cut -d' ' -f1; }

# --- Python: sentry-sdk ---------------------------------------------------------
py_stamp="$venv/.ssogate-peers.stamp"
py_want="$({ python3 -c "import sys; print(sys.executable, sys.version)"; cat "$peers/requirements.txt"; } | hash)"
if [[ -x $venv/bin/python && -f $py_stamp && $(<"$py_stamp") == "$py_want" ]]; then
  echo "peers: python sentry-sdk up to date ($venv)"
else
  rm -rf "$venv"
  pip_opts=(--quiet --disable-pip-version-check --no-input --root-user-action=ignore)
  if [[ -z ${PEERS_NO_VENV:-} ]] && python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "peers: pip install -r requirements.txt into a venv"
    "$venv/bin/python" -m pip install "${pip_opts[@]}" -r "$peers/requirements.txt"
  else
    # No venv module (Debian without python3-venv): install into a folder and give
    # it a launcher at the venv's usual place, so callers never need to know.
    rm -rf "$venv"
    echo "peers: python3 -m venv unavailable; pip install --target"
    python3 -m pip install "${pip_opts[@]}" --target "$venv/site-packages" \
      -r "$peers/requirements.txt"
    mkdir -p "$venv/bin"
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
      "$venv/site-packages" "$(python3 -c "import sys; print(sys.executable)")" >"$venv/bin/python"
    chmod +x "$venv/bin/python"
  fi
  "$venv/bin/python" -c 'import sentry_sdk; print("peers: sentry-sdk", sentry_sdk.VERSION)'
  "$venv/bin/python" -c 'import jwt, cryptography; print("peers: PyJWT", jwt.__version__, "cryptography", cryptography.__version__)'
  echo "$py_want" >"$py_stamp"
fi

# --- Node: @sentry/cli ----------------------------------------------------------
# The binary comes from the optional dependency @sentry/cli-linux-x64 (a registry
# package). --ignore-scripts skips @sentry/cli's postinstall, whose only job is a
# fallback download from Sentry's CDN when that optional package is missing.
npm_stamp="$peers/node_modules/.ssogate-peers.stamp"
npm_want="$({ node --version; cat "$peers/package.json" "$peers/package-lock.json"; } | hash)"
if [[ -x $peers/node_modules/.bin/sentry-cli && -f $npm_stamp && $(<"$npm_stamp") == "$npm_want" ]]; then
  echo "peers: npm @sentry/cli up to date ($peers/node_modules)"
else
  echo "peers: npm ci in tests/peers"
  (cd "$peers" && npm ci --ignore-scripts --include=optional --no-audit --no-fund --loglevel=error)
  echo "peers: $("$peers/node_modules/.bin/sentry-cli" --version)"
  echo "$npm_want" >"$npm_stamp"
fi

# --- Node: the e2e suite's packages ------------------------------------------------
e2e="$root/tests/e2e"
e2e_stamp="$e2e/node_modules/.ssogate-peers.stamp"
e2e_want="$({ node --version; cat "$e2e/package.json" "$e2e/package-lock.json"; } | hash)"
if [[ -f $e2e_stamp && $(<"$e2e_stamp") == "$e2e_want" ]]; then
  echo "peers: npm oidc-provider, playwright-core up to date ($e2e/node_modules)"
else
  echo "peers: npm ci in tests/e2e"
  (cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$e2e_want" >"$e2e_stamp"
fi

# --- Debian: chromium for the browser tests, redis-server for tests/it/replicas.rs, -----
# --- testssl.sh for tests/it/tls_grade.rs, nginx for tests/it/nginx_front.rs, pebble ------
# --- (an ACME CA, with pebble-challtestsrv as its DNS) for tests/it/acme.rs ----------------
missing=()
command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v testssl >/dev/null 2>&1 || missing+=(testssl.sh)
# Not always on a non-root PATH: Debian puts it in /usr/sbin.
[[ -x ${NGINX:-/usr/sbin/nginx} ]] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v pebble >/dev/null 2>&1 || missing+=(pebble)
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "peers: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "peers: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "peers: $("${CHROMIUM:-chromium}" --version 2>/dev/null | head -n1)"
echo "peers: $(redis-server --version)"
echo "peers: testssl.sh $(dpkg-query -W -f='${Version}' testssl.sh 2>/dev/null || echo '(not from Debian)')"
echo "peers: $("${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}" -v 2>&1)"
echo "peers: pebble $(dpkg-query -W -f='${Version}' pebble 2>/dev/null || echo '(not from Debian)')"
