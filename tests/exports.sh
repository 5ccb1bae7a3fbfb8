#!/bin/sh
# The libraries export exactly the API: every global symbol the shared and
# the static library define is a function that include/lazymap.h declares
# with LAZYMAP_API, and every such function is there. Usage:
# exports.sh NM lazymap.h liblazymap.so liblazymap.a
set -u
nm=$1 header=$2 so=$3 a=$4
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# The API: the names after LAZYMAP_API ... (, one per declaration.
sed -n 's/^LAZYMAP_API[^(]*[ *]\(lazymap_[a-z_0-9]*\)(.*/\1/p' "$header" | sort -u >"$tmp/api"
[ -s "$tmp/api" ] || { echo "no LAZYMAP_API declarations found in $header"; exit 1; }

status=0
check() { # what, file of names
	sort -u "$2" >"$2.s"
	extra=$(comm -13 "$tmp/api" "$2.s")
	missing=$(comm -23 "$tmp/api" "$2.s")
	if [ -n "$extra" ]; then
		echo "FAIL: $1 exports symbols outside the API:"; echo "$extra" | sed 's/^/  /'
		status=1
	fi
	if [ -n "$missing" ]; then
		echo "FAIL: $1 lacks API functions:"; echo "$missing" | sed 's/^/  /'
		status=1
	fi
	[ -z "$extra$missing" ] && echo "ok: $1 exports the $(wc -l <"$tmp/api") API functions and nothing else"
}

# Shared: the dynamic symbol table, without the version node itself (an
# absolute symbol) and with the @@version suffix dropped.
"$nm" -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' >"$tmp/so" || exit 1
check "$so" "$tmp/so"
# Static: every global definition in the archive.
"$nm" -g --defined-only "$a" | awk 'NF == 3 { print $3 }' >"$tmp/a" || exit 1
check "$a" "$tmp/a"
exit $status
