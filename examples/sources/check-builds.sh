#!/bin/sh
# Builds every sample release the way the Homeostat builder does, twice, in two different
# directories, and checks that both builds install byte-identical files.
#
# Per step, as the builder runs it: cwd = the unpacked source with its top directory stripped,
# environment cleared except PATH, HOME, SOURCE_DATE_EPOCH, LC_ALL, TZ, DESTDIR, SYSROOT,
# CPATH and LIBRARY_PATH; build dependencies' installed files unpacked into SYSROOT.
# The steps are the catalog's (examples/catalog/packages/*.yaml): make; make install PREFIX=/usr.
#
#   examples/sources/check-builds.sh [version ...]     (default: 1.0 1.1)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ "$#" -gt 0 ] || set -- 1.0 1.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build NAME VERSION ROOT SYSROOT -> installs into ROOT/dest, builds in ROOT/a/deeper/src
build() {
	name=$1 version=$2 root=$3 sysroot=$4 src=$3/$5
	mkdir -p "$src" "$root/dest" "$root/home"
	tar -xzf "$here/$name-$version.tar.gz" -C "$src" --strip-components=1
	for step in "make" "make install PREFIX=/usr"; do
		(cd "$src" && env -i \
			PATH="$sysroot/usr/bin:/usr/local/bin:/usr/bin:/bin" HOME="$root/home" \
			SOURCE_DATE_EPOCH=0 LC_ALL=C TZ=UTC DESTDIR="$root/dest" SYSROOT="$sysroot" \
			CPATH="$sysroot/usr/include" LIBRARY_PATH="$sysroot/usr/lib" \
			sh -c "$step") >"$root/log" 2>&1 || { cat "$root/log" >&2; echo "check-builds: $name-$version: '$step' failed" >&2; exit 1; }
	done
}

# manifest DIR: one line per installed file, symlink and directory with its type and mode,
# plus the sha256 of each file's content.
manifest() {
	(cd "$1" && find . -mindepth 1 -printf '%y %m %p\n' | sort && find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

status=0
for v in "$@"; do
	for pkg in libgreet greet motd; do
		for run in 1 2; do
			if [ "$run" = 1 ]; then sub=src; else sub=some/much/longer/build/path/src; fi
			r=$work/$v/$pkg/run$run
			sys=$work/$v/$pkg/sysroot$run
			mkdir -p "$sys"
			# greet's build dependency: libgreet of the same release line, unpacked into SYSROOT.
			[ "$pkg" = greet ] && cp -a "$work/$v/libgreet/run$run/dest/." "$sys/"
			build "$pkg" "$v" "$r" "$sys" "$sub"
			manifest "$r/dest" > "$r/manifest"
		done
		if cmp -s "$work/$v/$pkg/run1/manifest" "$work/$v/$pkg/run2/manifest"; then
			echo "ok   $pkg-$v: $(grep -c '^f ' "$work/$v/$pkg/run1/manifest") files identical in both builds"
			sed -n 's|^\([0-9a-f]\{64\}\)  \./|     \1  /|p' "$work/$v/$pkg/run1/manifest"
		else
			echo "FAIL $pkg-$v: builds differ"; diff "$work/$v/$pkg/run1/manifest" "$work/$v/$pkg/run2/manifest" || true
			status=1
		fi
	done
	# Smoke test of the installed programs.
	d=$work/$v
	echo "     greet: $("$d/greet/run1/dest/usr/bin/greet" alice) | $("$d/greet/run1/dest/usr/bin/greet" --version)"
	echo "     motd:  $(MOTD_FILE="$d/motd/run1/dest/usr/share/motd/message" sh "$d/motd/run1/dest/usr/bin/motd" | head -1) | $(sh "$d/motd/run1/dest/usr/bin/motd" --version)"
done
exit $status
