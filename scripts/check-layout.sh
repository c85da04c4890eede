#!/usr/bin/env bash
# Checks that the README's "Repository layout" table names every top-level entry of the repository and every
# module and directory of server/src, agent/src and tests/src (run by `make check`): a file added without
# updating the table fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
section=$(awk '/^## Repository layout/ { on = 1; next } /^## / { on = 0 } on' README.md)
missing=()
mentions() { grep -qE "(\`|[ /,({])$1([\`/,.) }]|$)" <<<"$section"; }
for top in $(git ls-files | cut -d/ -f1 | sort -u); do
  case "$top" in .gitignore | README.md) continue ;; esac
  mentions "${top//./\\.}" || missing+=("$top")
done
for crate in server agent tests; do
  for f in $(git ls-files "$crate/src" | grep -E "^$crate/src/[^/]+(\.rs|/)" | sed -E "s|^$crate/src/([^/.]+).*|\1|" | sort -u); do
    case "$f" in lib | main | mod | tests) continue ;; esac
    mentions "$f" || missing+=("$crate/src/$f")
  done
done
for d in $(git ls-files server/src | grep -E '^server/src/[^/]+/[^/]+(\.rs|/)' | sed -E 's|^server/src/[^/]+/([^/.]+).*|\1|' | sort -u); do
  case "$d" in mod | tests | testdata) continue ;; esac
  mentions "$d" || missing+=("server/src/*/$d")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "README.md's Repository layout does not mention: ${missing[*]}" >&2
  exit 1
fi
echo "README layout names every top-level entry and module"
