#!/usr/bin/env bash
# Fails when `nbdev-export` or `nbdev-clean` would change any file under nbs/ or maskfocus/:
# the exported modules must match the notebooks, and the notebooks must be committed clean.
# Works on a dirty working tree too: it compares file hashes before and after, not `git diff`.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot() { find nbs maskfocus -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }
before=$(snapshot)
nbdev-export
nbdev-clean
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "nbdev-export / nbdev-clean changed these files; run them and commit the result:" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u >&2
  exit 1
fi
echo "nbdev-export and nbdev-clean leave no diff."
