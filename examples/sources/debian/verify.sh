#!/bin/sh
# Checks the vendored .debs against Debian's signed chain: InRelease (gpgv, Debian's archive
# keyring) -> the Packages index's sha256 -> each .deb's sha256. Needs current apt lists for
# bookworm (apt-get update), not the network.
set -eu
cd "$(dirname "$0")"
lists=/var/lib/apt/lists
release=$lists/deb.debian.org_debian_dists_bookworm_InRelease
gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg "$release" 2>&1 | grep -q "Good signature" || { echo "InRelease: no good signature"; exit 1; }
packages=$(mktemp)
trap 'rm -f "$packages"' EXIT
/usr/lib/apt/apt-helper cat-file "$lists"/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages* > "$packages"
sum=$(sha256sum "$packages" | cut -d' ' -f1)
grep -q " $sum .* main/binary-amd64/Packages$" "$release" || { echo "the Packages index is not the one InRelease signs"; exit 1; }
for deb in *.deb; do
  want=$(sha256sum "$deb" | cut -d' ' -f1)
  grep -q "^SHA256: $want$" "$packages" || { echo "$deb: sha256 $want is not in the signed Packages index"; exit 1; }
  echo "$deb: $want, in the Packages index signed by Debian"
done
