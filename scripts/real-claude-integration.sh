#!/usr/bin/env bash
# The real-CLI integration tests (integration/real-claude.test.ts, integration/real-claude-permissions.test.ts):
# installs the pinned Claude Code CLI into a cache directory outside the repo's node_modules (once),
# checks its version, and runs the tests with CLAUDE_BIN set to it. Not part of `npm test`.
#
#   scripts/real-claude-integration.sh                 # on PGlite (DATABASE_URL unset)
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/real-claude-integration.sh
#                                                      # on Postgres (a fresh database per run)
#   CLAUDE_BIN=/path/to/claude scripts/real-claude-integration.sh   # skip the install, use this binary
#
# Environment: MOBVIBE_CLAUDE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mobvibe-claude-<version>),
# TEST_LOG_LEVEL (the service's log level in the test, default silent). Extra arguments go to tap.
# Needs the npm registry for the first install only (~364 MiB native binary); the test itself runs
# offline against a fake Anthropic API on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_VERSION=2.1.330
PACKAGE=@anthropic-ai/claude-code
CACHE=${MOBVIBE_CLAUDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobvibe-claude-$CLAUDE_VERSION}
started=$(date +%s)

log() { printf '[real-claude] %s\n' "$*" >&2; }

# Prints the first word of `$1 --version` (run with an empty home: nothing of ours is touched).
version_of() {
  local home out
  home=$(mktemp -d)
  out=$(env -i PATH="$PATH" HOME="$home" "$1" --version 2>/dev/null) || out=''
  rm -rf "$home"
  printf '%s' "${out%% *}"
}

# The binary of the pinned version in $CACHE: the package's bin (a hard link to the native binary when
# its postinstall ran, a stub that exits 1 when it did not), else the platform package's binary.
find_bin() {
  local candidate
  for candidate in "$CACHE/node_modules/.bin/claude" "$CACHE"/node_modules/@anthropic-ai/claude-code-*/claude; do
    [ -x "$candidate" ] || continue
    if [ "$(version_of "$candidate")" = "$CLAUDE_VERSION" ]; then
      printf '%s' "$candidate"
      return 0
    fi
    log "$candidate does not report $CLAUDE_VERSION"
  done
  return 1
}

install_cli() {
  local tmp t0
  mkdir -p "$(dirname "$CACHE")"
  # install next to the cache and move it in whole: an interrupted or concurrent install never
  # leaves a half-filled cache behind
  tmp=$(mktemp -d "$CACHE.partial.XXXXXX")
  t0=$(date +%s)
  log "installing $PACKAGE@$CLAUDE_VERSION into $CACHE (first run: downloads ~364 MiB)"
  # Node >= 22 in the package's "engines" only concerns its JS wrapper: the CLI is a native binary
  npm install --prefix "$tmp" "$PACKAGE@$CLAUDE_VERSION" --save-exact --no-audit --no-fund --loglevel=error >&2
  log "installed in $(($(date +%s) - t0)) s"
  if [ -e "$CACHE" ]; then
    log "replacing $CACHE, which held no working $CLAUDE_VERSION binary"
    rm -rf "$CACHE"
  fi
  mv -T "$tmp" "$CACHE" 2>/dev/null || rm -rf "$tmp" # another run got there first: keep its copy
}

if [ -n "${CLAUDE_BIN:-}" ]; then
  bin=$CLAUDE_BIN
  found=$(version_of "$bin")
  if [ "$found" != "$CLAUDE_VERSION" ]; then
    log "CLAUDE_BIN=$bin reports '${found:-nothing}', not $CLAUDE_VERSION"
    exit 1
  fi
else
  if ! bin=$(find_bin); then
    install_cli
    bin=$(find_bin) || { log "no working $PACKAGE $CLAUDE_VERSION binary in $CACHE after the install"; exit 1; }
  fi
fi
log "CLAUDE_BIN=$bin (version $CLAUDE_VERSION); database: $([ -n "${DATABASE_URL:-}" ] && echo Postgres || echo PGlite)"

status=0
CLAUDE_BIN=$bin ./node_modules/.bin/tap --disable-coverage "$@" integration/real-claude.test.ts integration/real-claude-permissions.test.ts || status=$?
log "done in $(($(date +%s) - started)) s (exit $status)"
exit $status
