#!/usr/bin/env bash
# Builds the Debian package of ssogate from a release build:
#   bash config/debian/build.sh      -> target/debian/ssogate_<version>-1_<arch>.deb
# (the last line it prints is the package's path). tests/package.sh builds it this way,
# runs lintian on it, installs it and checks what was installed.
#
# Plain `dpkg-deb --build --root-owner-group` from a staged tree, not cargo-deb: every
# tool it needs (dpkg-deb, dpkg-shlibdeps, strip) comes with Debian's dpkg-dev and
# binutils, where cargo-deb is one more crate tree to compile on each CI machine (a few
# minutes of 2 cores) for what is here a page of shell; and the maintainer scripts,
# conffile and modes are written out plainly below, not inferred.
#
# What it holds:
#   /usr/bin/ssogate                            the release binary, stripped
#   /usr/lib/systemd/system/ssogate.service     config/ssogate.service
#   /usr/lib/sysusers.d/ssogate.conf            the `ssogate` user and group
#   /etc/ssogate/ssogate.toml                   config/ssogate.example.toml (a conffile)
#   /usr/share/doc/ssogate/                     README, the config/ pages, the example
#                                               configs, copyright, changelog
#   /usr/share/lintian/overrides/ssogate        the warnings meant (config/debian/lintian-overrides)
# and config/debian/{postinst,prerm,postrm} as its maintainer scripts.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-$PWD/target}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || {
  echo "build.sh: no version in Cargo.toml" >&2
  exit 1
}
revision=1
arch=$(dpkg --print-architecture)
package_version="$version-$revision"
maintainer="ssogate maintainers <maintainers@ssogate.invalid>"
cargo build --release --locked --bin ssogate >&2

# The date of the commit built (reproducible builds: dpkg-deb clamps file times to
# it), or now outside a git checkout. Set after the build, since C build scripts
# (aws-lc-sys) watch the variable and would build again for a new value.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch

out="$target/debian"
root="$out/ssogate_${package_version}_$arch"
rm -rf "$root"
mkdir -p "$root/DEBIAN"
doc="$root/usr/share/doc/ssogate"

install -D -m 0755 "$target/release/ssogate" "$root/usr/bin/ssogate"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/ssogate"
install -D -m 0644 config/ssogate.service "$root/usr/lib/systemd/system/ssogate.service"
install -D -m 0644 config/debian/ssogate.sysusers "$root/usr/lib/sysusers.d/ssogate.conf"
# Readable by root only until postinst hands the group to `ssogate`: the file is
# where the operator puts the client and session secrets.
install -d -m 0750 "$root/etc/ssogate"
install -m 0640 config/ssogate.example.toml "$root/etc/ssogate/ssogate.toml"

install -d -m 0755 "$doc/config" "$doc/examples"
for page in README.md config/README.md config/OPERATIONS.md config/SENTRY.md config/TROUBLESHOOTING.md; do
  install -m 0644 "$page" "$doc/$page"
  gzip -9n "$doc/$page"
done
install -m 0644 config/ssogate.example.toml config/sentry.toml "$doc/examples/"
install -m 0644 config/debian/copyright "$doc/copyright"
install -D -m 0644 config/debian/lintian-overrides "$root/usr/share/lintian/overrides/ssogate"
{
  echo "ssogate ($package_version) unstable; urgency=medium"
  echo
  echo "  * ssogate $version, built from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$epoch")"
} >"$doc/changelog.Debian"
gzip -9n "$doc/changelog.Debian"

for script in postinst prerm postrm; do
  install -m 0755 "config/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/ssogate/ssogate.toml >"$root/DEBIAN/conffiles"

# The shared libraries the binary links (libc, libgcc_s), as dpkg-shlibdeps finds
# them; it reads a debian/control, so it runs in a scratch directory holding one.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/debian"
printf 'Source: ssogate\n\nPackage: ssogate\nArchitecture: any\n' >"$scratch/debian/control"
shlibs=$(cd "$scratch" && dpkg-shlibdeps -O -e "$root/usr/bin/ssogate" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || {
  echo "build.sh: dpkg-shlibdeps found no library dependencies" >&2
  exit 1
}

cat >"$root/DEBIAN/control" <<EOF
Package: ssogate
Version: $package_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $shlibs, systemd | systemd-standalone-sysusers | systemd-sysusers
Section: net
Priority: optional
Description: single sign-on (OpenID Connect) gateway for Sentry and web apps
 ssogate is a TLS reverse proxy that runs the OpenID Connect login (Encvoy ID or
 any OIDC provider) in front of self-hosted Sentry or another web app, and
 forwards signed-in requests with identity headers and, optionally, a signed
 identity assertion. Sentry needs no patch and no SSO plugin.
 .
 The package installs the service's systemd unit (neither enabled nor started)
 and an example configuration in /etc/ssogate/ssogate.toml that must be filled
 in first: \`ssogate check\` says what is missing.
EOF

deb="$out/ssogate_${package_version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
