#!/bin/sh
# Packs every source directory <name>-<version>/ next to this script into a release tarball
# <name>-<version>.tar.gz whose single top directory is <name>-<version>/, reproducibly:
# entries sorted by name, mtime 0, owner and group 0 with no names, modes normalised (so the
# umask of the checkout does not matter), gzip header without name or timestamp.
# Prints the sha256 of each tarball. Running it twice gives the same bytes.
#
#   examples/sources/make-tarballs.sh [name-version ...]
set -eu
cd "$(dirname "$0")"
export LC_ALL=C TZ=UTC

if [ "$#" -eq 0 ]; then
	set --
	for d in */; do
		d=${d%/}
		case "$d" in *-[0-9]*) set -- "$@" "$d" ;; esac
	done
fi

for d in "$@"; do
	d=${d%/}
	if [ ! -f "$d/Makefile" ]; then
		echo "make-tarballs: $d: not a source directory (no Makefile)" >&2
		exit 1
	fi
	# Refuse to pack build products left over from a build inside the source tree.
	leftovers=$(find "$d" -type f \( -name '*.o' -o -name '*.a' -o -perm -u+x \) ! -name '*.sh' | sort)
	if [ -n "$leftovers" ]; then
		echo "make-tarballs: $d contains build products; run 'make -C $d clean':" >&2
		echo "$leftovers" >&2
		exit 1
	fi
	tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--mode='u+rwX,go+rX,go-w' -c "$d" | gzip -n -9 > "$d.tar.gz.tmp"
	mv "$d.tar.gz.tmp" "$d.tar.gz"
	sha256sum "$d.tar.gz"
done
