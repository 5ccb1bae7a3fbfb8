#!/bin/sh
# Make the installed static library export only the API: link its objects
# into one (ld -r), turn every hidden symbol (the lzm_* internals) local, and
# archive that. A program linking liblazymap.a then cannot clash with, or
# bind to, anything but lazymap_*. Usage: localize.sh CC OBJCOPY AR in.a out.a
set -eu
cc=$1 objcopy=$2 ar=$3 in=$4 out=$5
tmp="$out.o"
$cc -r -nostdlib -Wl,--whole-archive "$in" -Wl,--no-whole-archive -o "$tmp"
$objcopy --localize-hidden "$tmp"
rm -f "$out"
$ar rcs "$out" "$tmp"
rm -f "$tmp"
