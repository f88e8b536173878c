#!/usr/bin/env bash
# Vendor uPlot, the dashboard's chart library, into serving/dashboard/static/vendor/:
# dist/uPlot.iife.min.js, dist/uPlot.min.css and its LICENSE (MIT), as committed.
#
# npm is not reachable from every machine that builds Driftline, Maven Central is: the
# release comes from its WebJar (org.webjars.npm:uplot), checked against the digest pinned
# here. To upgrade: set UPLOT_VERSION, run with UPLOT_SHA256= (empty) to print the new
# jar's digest, pin it, run again, and check the dashboard (tests/integration/test_dashboard.py).
set -euo pipefail

UPLOT_VERSION="${UPLOT_VERSION:-1.6.30}"
UPLOT_SHA256="${UPLOT_SHA256-35b1d5d332ae25876ebd3b96c4a6180f29bec7675ad22dda9d3dc803691d19c9}"
MAVEN="${MAVEN_REPOSITORY:-https://repo1.maven.org/maven2}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/serving/dashboard/static/vendor"
url="$MAVEN/org/webjars/npm/uplot/$UPLOT_VERSION/uplot-$UPLOT_VERSION.jar"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetching $url"
curl -fsSL --retry 3 -o "$work/uplot.jar" "$url"
actual="$(sha256sum "$work/uplot.jar" | cut -d' ' -f1)"
if [[ -z "$UPLOT_SHA256" ]]; then
    echo "sha256 of uplot-$UPLOT_VERSION.jar: $actual (pin it as UPLOT_SHA256)" >&2
    exit 1
fi
if [[ "$actual" != "$UPLOT_SHA256" ]]; then
    echo "sha256 mismatch for $url: expected $UPLOT_SHA256, got $actual" >&2
    exit 1
fi

inside="META-INF/resources/webjars/uplot/$UPLOT_VERSION"
unzip -q -o "$work/uplot.jar" "$inside/dist/uPlot.iife.min.js" "$inside/dist/uPlot.min.css" \
    "$inside/LICENSE" -d "$work/x"
mkdir -p "$dest"
cp "$work/x/$inside/dist/uPlot.iife.min.js" "$work/x/$inside/dist/uPlot.min.css" "$dest/"
cp "$work/x/$inside/LICENSE" "$dest/LICENSE-uPlot"
echo "uPlot $UPLOT_VERSION vendored into ${dest#"$root"/}"
