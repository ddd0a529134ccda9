#!/usr/bin/env bash
# Install the real third-party programs the scenario corpus runs (Debian bookworm, as root),
# and libtorrent from PyPI into the project's virtual environment.
#
#   benchmarks/scenarios/install.sh          everything the corpus uses
#   benchmarks/scenarios/install.sh --small  only the small set the test suite needs
set -euo pipefail
cd "$(dirname "$0")/../.."

# binutils: PyInstaller (tests/test_frozen_python.py) writes its archive with objcopy
SMALL=(aria2 ctorrent dropbear-bin microsocks iproute2 busybox-static nmap john hydra netcat-openbsd
       wget curl binutils)
FULL=("${SMALL[@]}" transmission-cli qbittorrent-nox rtorrent hashcat tor
      slowhttptest hping3)

if [ "${1:-}" = "--small" ]; then packages=("${SMALL[@]}"); else packages=("${FULL[@]}"); fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
# UPX (the packer the evasion tests pack real tools with): Debian's upx-ucl is not in
# bookworm, so where the configured sources lack it, bullseye's build (which runs on bookworm)
# is fetched from the machine's own Debian mirror with a private apt configuration, leaving
# the system's sources as they are.
if ! command -v upx-ucl >/dev/null 2>&1; then
    if ! $SUDO apt-get install -y -qq --no-install-recommends upx-ucl 2>/dev/null; then
        mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
        [ -n "$mirror" ] || mirror=$(awk '/^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
        tmp=$(mktemp -d)
        mkdir -p "$tmp/lists/partial" "$tmp/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" \
            > "$tmp/sources.list"
        apt_private=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                     -o "Dir::State::Lists=$tmp/lists")
        $SUDO apt-get "${apt_private[@]}" update -qq
        (cd "$tmp/debs" && $SUDO apt-get "${apt_private[@]}" download upx-ucl libucl1 2>/dev/null)
        $SUDO apt-get install -y -qq --no-install-recommends "$tmp"/debs/*.deb
        rm -rf "$tmp"
    fi
fi
if [ "${1:-}" != "--small" ] && [ -x .venv/bin/pip ]; then
    .venv/bin/pip install --quiet libtorrent
fi
