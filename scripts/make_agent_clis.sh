#!/usr/bin/env bash
# Install the Node coding agents used by the end-to-end tests, at pinned versions, into a
# git-ignored directory (default <repo>/.agent-clis): Claude Code and Gemini CLI.
#
# Usage: scripts/make_agent_clis.sh [DIR]      (env POUCH_AGENT_CLIS overrides the default DIR)
# Idempotent: installs only a package whose pinned version is not already in DIR, and
# checks that each binary answers --version. Claude Code's package pulls a native binary of
# about 400 MB (@anthropic-ai/claude-code-linux-x64) through npm's optional dependencies and
# its install script, so scripts must not be disabled. Prints the two binaries' paths.
set -euo pipefail

CLAUDE_CODE_VERSION="2.1.332"
GEMINI_CLI_VERSION="0.61.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-${POUCH_AGENT_CLIS:-$repo/.agent-clis}}"
mkdir -p "$dir"
[[ -f "$dir/package.json" ]] || echo '{"name": "pouch-agent-clis", "private": true}' > "$dir/package.json"

installed() {  # NAME VERSION -> 0 if DIR has exactly that version
    local pj="$dir/node_modules/$1/package.json"
    [[ -f "$pj" ]] && [[ "$(node -p "require('$pj').version" 2>/dev/null)" == "$2" ]]
}

want=()
installed "@anthropic-ai/claude-code" "$CLAUDE_CODE_VERSION" || want+=("@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION")
installed "@google/gemini-cli" "$GEMINI_CLI_VERSION" || want+=("@google/gemini-cli@$GEMINI_CLI_VERSION")
if ((${#want[@]})); then
    echo "installing ${want[*]} into $dir" >&2
    (cd "$dir" && npm install --no-audit --no-fund --save-exact "${want[@]}" >&2)
fi

claude="$dir/node_modules/.bin/claude"
gemini="$dir/node_modules/.bin/gemini"
for b in "$claude" "$gemini"; do
    if ! v="$(DISABLE_AUTOUPDATER=1 "$b" --version 2>&1)"; then
        echo "$b --version failed: $v" >&2
        exit 1
    fi
    echo "$b: $v"
done
