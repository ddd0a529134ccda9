#!/usr/bin/env bash
# Install the real third-party programs the scenario corpus runs (Debian bookworm, as root),
# and libtorrent from PyPI into the project's virtual environment.
#
#   benchmarks/scenarios/install.sh          everything the corpus uses
#   benchmarks/scenarios/install.sh --small  only the small set the test suite needs
set -euo pipefail
cd "$(dirname "$0")/../.."

SMALL=(aria2 ctorrent dropbear-bin microsocks)
FULL=("${SMALL[@]}" transmission-cli qbittorrent-nox rtorrent john hashcat hydra tor
      slowhttptest nmap hping3 binutils)

if [ "${1:-}" = "--small" ]; then packages=("${SMALL[@]}"); else packages=("${FULL[@]}"); fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
if [ "${1:-}" != "--small" ] && [ -x .venv/bin/pip ]; then
    .venv/bin/pip install --quiet libtorrent
fi
