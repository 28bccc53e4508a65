#!/usr/bin/env bash
# What `make demo` needs besides this repository: Linux, root (network
# namespaces and iptables), the Rust toolchain, and iproute2 (`ip`),
# iptables and util-linux (`setpriv`). Installs the missing packages on
# Debian/Ubuntu; elsewhere says what to install.
set -euo pipefail

fail() { echo "make demo: $*" >&2; exit 1; }

[[ "$(uname -s)" == Linux ]] ||
  fail "needs Linux (network namespaces, iptables); this is $(uname -s)"
[[ "$(id -u)" == 0 ]] ||
  fail "needs root to create network namespaces and iptables rules: sudo make demo"
command -v cargo >/dev/null ||
  fail "needs the Rust toolchain (cargo), https://rustup.rs; under sudo, keep your PATH: sudo env \"PATH=\$PATH\" make demo"

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v setpriv >/dev/null || missing+=(util-linux)
((${#missing[@]})) || exit 0

if command -v apt-get >/dev/null; then
  echo "make demo: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  fail "missing ${missing[*]} (the commands ip, iptables-restore, setpriv). Install them with your package manager:
  Fedora, RHEL:  dnf install iproute iptables-nft util-linux
  Arch:          pacman -S iproute2 iptables-nft util-linux
  Alpine:        apk add iproute2 iptables setpriv
  openSUSE:      zypper install iproute2 iptables util-linux"
fi
