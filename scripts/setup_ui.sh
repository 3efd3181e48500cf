#!/usr/bin/env bash
# Idempotent set-up of the web UI (ui/): `npm ci` when ui/node_modules is missing or
# package-lock.json changed; with --build, `npm run build` when ui/dist is missing or older than
# the sources (content hash); with --browser, Chromium for the browser tests (apt, as root).
#
# Exit status: 0 ready; 3 no Node.js/npm; 4 no Chromium and no way to install it (not root or no
# apt-get); anything else: a step failed. The reason is printed on stderr.
set -euo pipefail
cd "$(dirname "$0")/../ui"
BUILD=0 BROWSER=0
for arg in "$@"; do
  case $arg in
    --build) BUILD=1 ;;
    --browser) BROWSER=1 ;;
    *) echo "setup_ui.sh: unknown option $arg (use --build, --browser)" >&2; exit 64 ;;
  esac
done

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup_ui.sh: Node.js >= 20.19 and npm are needed for ui/ (https://nodejs.org)" >&2
  exit 3
fi

hash_of() { for f in "$@"; do echo "$f"; cat "$f"; done | sha256sum | cut -c1-16; }

want=$(hash_of package.json package-lock.json)
if [ ! -d node_modules ] || [ "$(cat node_modules/.saes-setup 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.saes-setup
fi

if [ "$BUILD" = 1 ]; then
  sources=$(find src public index.html vite.config.ts tsconfig.json tsconfig.app.json tsconfig.node.json \
    package-lock.json -type f ! -name '*.test.ts' ! -name '*.test.tsx' | LC_ALL=C sort)
  # shellcheck disable=SC2086
  want=$(hash_of $sources)
  if [ ! -f dist/index.html ] || [ "$(cat dist/.saes-build 2>/dev/null)" != "$want" ]; then
    npm run build --silent >/dev/null
    echo "$want" > dist/.saes-build
  fi
fi

if [ "$BROWSER" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup_ui.sh: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get:" \
      "apt-get install -y chromium)" >&2
    exit 4
  fi
fi
