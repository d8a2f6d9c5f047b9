#!/usr/bin/env bash
# Fetches ONNX Runtime's C/C++ API headers (never committed) for the ORT custom-op library.
#
# Order of preference:
#   1. $ONNXRUNTIME_ROOT (an ONNX Runtime release folder with include/): nothing to fetch.
#   2. third_party/onnxruntime already holding the headers: nothing to fetch (idempotent, quick).
#   3. Debian's libonnxruntime-dev from the trixie suite, downloaded with apt-get into a private apt
#      state (the machine's own apt configuration is left untouched) and unpacked with dpkg -x into
#      third_party/onnxruntime (headers in usr/include/onnxruntime/). The archive URIs are taken
#      from the machine's /etc/apt/sources.list.d/debian.sources, only the suite is changed.
# Where it cannot fetch, it says why and leaves no headers; the CMake build then stops with one
# message saying how to provide them (it never builds without the ONNX Runtime op library silently).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/third_party/onnxruntime"
HEADER_DIR="$DEST/usr/include/onnxruntime"
SUITE="${ORT_HEADERS_SUITE:-trixie}"
PACKAGE="libonnxruntime-dev"
SOURCES="${ORT_HEADERS_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}"

say() { echo "fetch_ort_headers: $*"; }

if [[ -n "${ONNXRUNTIME_ROOT:-}" ]]; then
  if [[ -f "$ONNXRUNTIME_ROOT/include/onnxruntime_c_api.h" || -f "$ONNXRUNTIME_ROOT/include/onnxruntime/onnxruntime_c_api.h" ]]; then
    say "using ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT"
  else
    say "warning: ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT has no include/onnxruntime_c_api.h"
  fi
  exit 0
fi

if [[ -f "$HEADER_DIR/onnxruntime_c_api.h" && -f "$HEADER_DIR/onnxruntime_cxx_api.h" ]]; then
  say "headers present in ${HEADER_DIR#"$ROOT"/}"
  exit 0
fi

skip() {
  say "$*"
  say "no headers fetched: set ONNXRUNTIME_ROOT to an unpacked ONNX Runtime release (its include/ holds them) or install libonnxruntime-dev"
  exit 0
}

# deb822 stanzas of the main archive, Suites replaced by $SUITE (stanzas listing only suites
# with a dash -- security, updates, backports -- are dropped).
derive_deb822() {
  awk -v suite="$SUITE" '
    function flush() {
      if (stanza != "" && keep) printf "%s\n", stanza
      stanza = ""; keep = 0
    }
    /^[[:space:]]*$/ { flush(); next }
    /^[[:space:]]*#/ { next }
    /^Suites:/ {
      n = split(substr($0, 8), s, /[[:space:]]+/)
      for (i = 1; i <= n; i++) if (s[i] != "" && s[i] !~ /-/) keep = 1
      stanza = stanza "Suites: " suite "\n"; next
    }
    { stanza = stanza $0 "\n" }
    END { flush() }
  ' "$SOURCES" > "$LIST"
}

command -v apt-get >/dev/null 2>&1 || skip "apt-get not found"
command -v dpkg >/dev/null 2>&1 || skip "dpkg not found"
LEGACY_SOURCES=/etc/apt/sources.list
[[ -r "$SOURCES" || -r "$LEGACY_SOURCES" ]] || skip "no apt sources at $SOURCES"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dd-ort-headers.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/archives/partial" "$WORK/download"

if [[ ! -r "$SOURCES" ]]; then
  # One-line format (older images): the main archive's "deb" lines, suite replaced.
  SOURCES="$LEGACY_SOURCES"
  LIST="$WORK/ort.list"
  awk -v suite="$SUITE" '
    $1 == "deb" {
      i = 2; opts = ""
      if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
      if ($(i + 1) ~ /-/) next
      printf "deb%s %s %s main\n", opts, $i, suite
    }' "$SOURCES" > "$LIST"
  grep -q '^deb' "$LIST" || skip "no main-archive line in $SOURCES"
else
  # The URIs and Signed-By lines come from the machine's own configuration.
  LIST="$WORK/ort.sources"
  derive_deb822
  grep -q '^URIs:' "$LIST" || skip "no main-archive stanza in $SOURCES"
fi
say "apt source (suite $SUITE) derived from $SOURCES:"
sed 's/^/    /' "$LIST"

APT_OPTS=(
  -o "Dir::Etc::sourcelist=$LIST"
  -o "Dir::Etc::sourceparts=/dev/null"
  -o "Dir::State::Lists=$WORK/lists"
  -o "Dir::Cache::Archives=$WORK/archives"
  -o "Dir::Cache::pkgcache=$WORK/pkgcache.bin"
  -o "Dir::Cache::srcpkgcache=$WORK/srcpkgcache.bin"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=1"
)
say "apt-get update (private lists in $WORK)"
apt-get "${APT_OPTS[@]}" -qq update || skip "apt-get update failed"
say "apt-get download $PACKAGE"
(cd "$WORK/download" && apt-get "${APT_OPTS[@]}" -qq download "$PACKAGE") || skip "apt-get download $PACKAGE failed"
DEB="$(ls "$WORK"/download/*.deb 2>/dev/null | head -n 1)"
[[ -n "$DEB" ]] || skip "no .deb downloaded"

say "unpacking $(basename "$DEB") into ${DEST#"$ROOT"/}"
rm -rf "$DEST"
mkdir -p "$DEST"
dpkg -x "$DEB" "$DEST"
# dpkg -x leaves symlinks to the (absent) runtime library; only the headers are used.
[[ -f "$HEADER_DIR/onnxruntime_c_api.h" ]] || skip "$PACKAGE has no usr/include/onnxruntime/onnxruntime_c_api.h"
VERSION="$(dpkg-deb -f "$DEB" Version)"
echo "$VERSION" > "$DEST/VERSION"
say "ONNX Runtime headers $VERSION in ${HEADER_DIR#"$ROOT"/}"
