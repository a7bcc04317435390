#!/usr/bin/env bash
# The Debian package, as an operator meets it: builds it (config/debian/build.sh, from
# a release build), runs lintian on it (no error allowed), installs it on this machine
# with `dpkg -i`, checks what an operator sees, then purges it and checks what is left.
#
# Needs root (dpkg -i); CI runs as root on a fresh machine. As root it installs what it
# lacks with apt (dpkg-dev, lintian, systemd, binutils); without root it only builds the
# package and runs lintian, and says so. It refuses to run where ssogate is already
# installed (it would replace an operator's package), and purges its own install
# whatever happens. Ends with "package: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
pass() {
  echo "ok   $1"
  passed=$((passed + 1))
}
fail() {
  echo "FAIL $1"
  failed=$((failed + 1))
}
# check "what is true" command...: passes when the command succeeds.
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
finish() {
  echo "package: $passed passed, $failed failed"
  ((failed == 0))
}

root=false
[[ $(id -u) == 0 ]] && root=true

needed=()
command -v dpkg-shlibdeps >/dev/null || needed+=(dpkg-dev)
command -v lintian >/dev/null || needed+=(lintian)
command -v systemd-analyze >/dev/null || needed+=(systemd)
command -v strip >/dev/null || needed+=(binutils)
if ((${#needed[@]})); then
  if ! $root; then
    echo "package: missing ${needed[*]}; install with: sudo apt-get install ${needed[*]}" >&2
    exit 1
  fi
  echo "package: apt-get install ${needed[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
fi

deb=$(bash config/debian/build.sh | tail -n1)
echo "package: built $deb"
version=$(dpkg-deb --field "$deb" Version)
cargo_version=${version%-*}
check "the package's description says to run ssogate check first" \
  bash -c "dpkg-deb --field '$deb' Description | grep -qF '\`ssogate check\` says what is missing'"

# lintian: warnings are shown (a man page is missing, for one), errors fail; those
# meant are overridden in config/debian/lintian-overrides. Every tag is shown, not the
# first few of each.
if lintian --fail-on error --tag-display-limit 0 "$deb"; then
  pass "lintian reports no error"
else
  fail "lintian reports no error"
fi

if ! $root; then
  echo "package: not root: installing the package skipped (CI runs it as root)"
  finish
  exit
fi

if dpkg-query -W -f='${Status}' ssogate 2>/dev/null | grep -q installed; then
  echo "package: ssogate is already installed on this machine; dpkg --purge ssogate first" >&2
  exit 1
fi
trap 'dpkg --purge ssogate >/dev/null 2>&1 || true' EXIT

# Whether the user was there before (a hand install), so that its survival proves nothing.
user_before=false
getent passwd ssogate >/dev/null && user_before=true

check "dpkg -i installs the package" dpkg -i "$deb"

# What is installed, where the unit and the docs say.
unit=/usr/lib/systemd/system/ssogate.service
check "ssogate --version prints the package's version" \
  test "$(/usr/bin/ssogate --version)" = "ssogate $cargo_version"
check "the unit runs /usr/bin/ssogate as user ssogate with /etc/ssogate/ssogate.toml" \
  grep -qxF 'ExecStart=/usr/bin/ssogate run' "$unit"
check "  (User=ssogate)" grep -qxF 'User=ssogate' "$unit"
check "  (SSOGATE_CONFIG)" grep -qxF 'Environment=SSOGATE_CONFIG=/etc/ssogate/ssogate.toml' "$unit"
check "systemd-analyze verify finds nothing wrong in the unit" \
  bash -c "out=\$(systemd-analyze verify $unit 2>&1) && [[ -z \$out ]] || { echo \"\$out\"; false; }"
check "the system user ssogate exists, with no login shell" \
  bash -c 'getent passwd ssogate | grep -q ":/usr/sbin/nologin$"'
check "the group ssogate exists" bash -c 'getent group ssogate >/dev/null'
check "/etc/ssogate is root:ssogate 0750" test "$(stat -c '%U:%G %a' /etc/ssogate)" = "root:ssogate 750"
check "/etc/ssogate/ssogate.toml is root:ssogate 0640" \
  test "$(stat -c '%U:%G %a' /etc/ssogate/ssogate.toml)" = "root:ssogate 640"
check "/etc/ssogate/ssogate.toml is the example config" \
  cmp -s /etc/ssogate/ssogate.toml config/ssogate.example.toml
check "/etc/ssogate/ssogate.toml is a conffile" \
  bash -c "dpkg-query -W -f='\${Conffiles}' ssogate | grep -q '^ /etc/ssogate/ssogate.toml '"
check "the README is in /usr/share/doc/ssogate" \
  bash -c 'zcat /usr/share/doc/ssogate/README.md.gz | cmp -s - README.md'
check "the copyright file is in /usr/share/doc/ssogate" test -f /usr/share/doc/ssogate/copyright
check "the service is neither enabled nor started by the install" \
  test ! -e /etc/systemd/system/multi-user.target.wants/ssogate.service

# `ssogate check` on the config as installed, run as the service's user: it can read
# the file, and refuses it, naming each thing to fill in (as the README shows).
set +e
report=$(runuser -u ssogate -- env -i PATH=/usr/bin:/bin ssogate check --config /etc/ssogate/ssogate.toml 2>&1)
status=$?
set -e
echo "$report" | sed 's/^/     | /'
check "ssogate check refuses the config as installed" test "$status" -ne 0
for wanted in \
  'FAIL config: tls.cert_file: file `/etc/ssogate/tls/fullchain.pem` does not exist' \
  "FAIL config: session.secrets: secret #1 is the example config's placeholder: fill in the output of \`ssogate gen-secret\`" \
  "FAIL config: oidc.client_secret: is the example config's placeholder: fill in the Client secret of the application registered at the provider"; do
  check "ssogate check says: ${wanted#FAIL config: }" grep -qxF -- "$wanted" <<<"$report"
  check "  (and the README shows that line)" grep -qxF -- "$wanted" README.md
done

# An edited config survives reinstalling the package (dpkg keeps a changed conffile
# the package did not change, without asking).
echo '# edited by the operator' >>/etc/ssogate/ssogate.toml
check "dpkg -i again (an upgrade's path) succeeds" dpkg -i "$deb"
check "the operator's edit of the config is kept" \
  grep -qxF '# edited by the operator' /etc/ssogate/ssogate.toml

# The purge leaves the user (Debian policy) and nothing else of the package.
mkdir -p /etc/ssogate/tls
touch /etc/ssogate/tls/fullchain.pem
check "dpkg --purge removes the package" dpkg --purge ssogate
trap - EXIT
check "the package is gone from dpkg's database" \
  bash -c '! dpkg-query -W -f="\${Status}" ssogate 2>/dev/null | grep -q installed'
for gone in /usr/bin/ssogate "$unit" /usr/lib/sysusers.d/ssogate.conf /etc/ssogate /usr/share/doc/ssogate; do
  check "$gone is gone" test ! -e "$gone"
done
if ! $user_before; then
  check "the user ssogate stays (Debian policy: its files may remain)" \
    bash -c 'getent passwd ssogate >/dev/null'
  userdel ssogate 2>/dev/null || true
  groupdel ssogate 2>/dev/null || true
fi

finish
