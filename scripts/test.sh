#!/usr/bin/env bash
# Runs every test of Parley: the Rust tests (unit, integration, command line, the Python
# conformance client), then the browser end-to-end tests in tests/web/ against a debug build.
# On a fresh Debian machine it first installs what is missing (Chromium, Node.js and npm with
# apt-get, the tests' npm packages with npm ci). A Rust toolchain is expected (see README.md).
#
#   scripts/test.sh          everything
#   scripts/test.sh rust     the Rust tests only
#   scripts/test.sh web      the browser tests only
#
# CHROMIUM names another Chromium binary; the browser tests' screenshots, and the pages and
# logs of a failed test, are left in target/web-artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
case "$what" in
  all | rust | web) ;;
  *) echo "usage: scripts/test.sh [all|rust|web]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

# apt-get as root: directly, or through sudo when we are not root.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_updated=no
apt_install() {
  command -v apt-get >/dev/null ||
    fail "$* must be installed and this system has no apt-get: install $* with its package manager, then run this script again."
  [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null ||
    fail "$* must be installed and this is not root and has no sudo: run 'apt-get install -y $*' as root, then this script again."
  step "Installing $* (apt-get)"
  if [ "$apt_updated" = no ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_updated=yes
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

command -v cargo >/dev/null ||
  fail "cargo is missing: install a Rust toolchain (1.85 or newer, https://rustup.rs), then run this script again."

if [ "$what" != rust ]; then
  chromium="${CHROMIUM:-/usr/bin/chromium}"
  if [ ! -x "$chromium" ]; then
    [ -n "${CHROMIUM:-}" ] && fail "CHROMIUM names $CHROMIUM, which is not an executable file."
    apt_install chromium
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
  # playwright-core needs Node.js 20, node:test's --test-concurrency 20.10; Debian 12's is 18.
  node -e 'const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit(major > 20 || (major === 20 && minor >= 10) ? 0 : 1)' ||
    fail "the browser tests need Node.js 20.10 or newer and this one is $(node --version): install it from Debian 13 or NodeSource (https://github.com/nodesource/distributions), then run this script again."
  # npm writes node_modules/.package-lock.json on every install: older than the lock file
  # means the lock changed since.
  if [ ! -f tests/web/node_modules/.package-lock.json ] ||
    [ tests/web/package-lock.json -nt tests/web/node_modules/.package-lock.json ]; then
    step "Installing the browser tests' packages (npm ci)"
    npm ci --prefix tests/web --no-audit --no-fund
  fi
fi

if [ "$what" != web ]; then
  step "Rust tests (cargo test --workspace --locked)"
  cargo test --workspace --locked
fi

if [ "$what" != rust ]; then
  step "Building the server for the browser tests (cargo build --locked -p parley)"
  cargo build --locked -p parley
  step "Browser tests (tests/web, Chromium $("$chromium" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n1))"
  PARLEY_BIN="$PWD/target/debug/parley" CHROMIUM="$chromium" npm test --prefix tests/web
  echo "Screenshots: target/web-artifacts/"
fi

step "All tests passed."
