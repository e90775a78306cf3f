#!/usr/bin/env bash
# Downloads a stock Debian cloud kernel package and unpacks what Keel's tests need:
#   <out>/vmlinuz   the bzImage
#   <out>/vmlinux   the ELF kernel inside it (decompressed; carries the PVH note)
#   <out>/modules/  the package's kernel modules (lib/modules/<version>)
#   <out>/version   the package version
# Usage: fetch-debian-kernel.sh <meta-package> <out-dir>
#   e.g. fetch-debian-kernel.sh linux-image-cloud-amd64 ~/.cache/keel/debian-6.1
# The meta-package is resolved to its current versioned image package (versions move, so none
# is hard-coded). Downloads are cached: an <out-dir> holding the same version is reused.
set -euo pipefail

meta=${1:?usage: $0 <meta-package> <out-dir>}
out=${2:?usage: $0 <meta-package> <out-dir>}

if ! command -v apt-cache >/dev/null; then
  echo "fetch-debian-kernel: apt-cache not found (needs a Debian host)" >&2
  exit 1
fi
pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >/dev/null
  pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$pkg" ] || { echo "fetch-debian-kernel: cannot resolve $meta" >&2; exit 1; }
version=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')

if [ -f "$out/version" ] && [ "$(cat "$out/version")" = "$pkg $version" ] \
   && [ -s "$out/vmlinuz" ] && [ -s "$out/vmlinux" ]; then
  echo "$out"
  exit 0
fi

for tool in zstd lz4 xz; do
  command -v "$tool" >/dev/null || { echo "fetch-debian-kernel: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >/dev/null)
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/root"

rm -rf "$out"
mkdir -p "$out"
cp "$work"/root/boot/vmlinuz-* "$out/vmlinuz"
mv "$work"/root/lib/modules/* "$out/modules" 2>/dev/null || mv "$work"/root/usr/lib/modules/* "$out/modules"

# The bzImage's payload is the compressed vmlinux: find the compression magic and decompress
# from each candidate offset until the result is an ELF (like the kernel's extract-vmlinux).
extract() {
  local magic=$1 tool=$2
  local offsets
  offsets=$(LC_ALL=C grep -obUaP "$magic" "$out/vmlinuz" | cut -d: -f1 || true)
  for off in $offsets; do
    tail -c +"$((off + 1))" "$out/vmlinuz" | $tool > "$work/vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
      mv "$work/vmlinux" "$out/vmlinux"
      return 0
    fi
  done
  return 1
}
extract '\x28\xb5\x2f\xfd' 'zstd -dc' \
  || extract '\x02\x21\x4c\x18' 'lz4 -dc' \
  || extract '\xfd\x37\x7a\x58\x5a\x00' 'xz -dc' \
  || { echo "fetch-debian-kernel: cannot find the vmlinux inside $pkg's bzImage" >&2; exit 1; }

echo "$pkg $version" > "$out/version"
echo "$out"
