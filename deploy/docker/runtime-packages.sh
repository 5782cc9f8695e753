#!/usr/bin/env bash
# Prints the Debian/Ubuntu packages that provide the shared libraries the given executables
# load (ldd, then dpkg -S), one per line, sorted. The image builds use it so the runtime stage
# installs exactly what the build stage linked against, whatever the distribution names them
# (libgrpc++1.51 on Debian 12, libgrpc++1.51t64 on Ubuntu 24.04).
#   deploy/docker/runtime-packages.sh build/bin/kvc-router build/bin/kvc-worker build/bin/kvc
# Fails if a library is not found or belongs to no package. The NVIDIA driver's libraries
# (libcuda, libnvidia-*) are skipped: the container toolkit mounts them from the host.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 EXECUTABLE..." >&2; exit 2; }
libs=$(ldd "$@" | awk '$1 ~ /^(libcuda\.so|libnvidia-)/ { next }
                      /=> not found/ { print "MISSING:" $1; next }
                      /=> \// { print $3 }' | sort -u)
if grep -q '^MISSING:' <<<"$libs"; then
  echo "runtime-packages: unresolved libraries: $(grep '^MISSING:' <<<"$libs" | tr '\n' ' ')" >&2
  exit 1
fi
pkgs=()
for lib in $libs; do
  # With merged /usr a library may be registered under /lib or /usr/lib: try both spellings.
  pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
        dpkg -S "/usr${lib}" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || true)
  if [ -z "$pkg" ]; then
    echo "runtime-packages: no package owns $lib" >&2
    exit 1
  fi
  pkgs+=("$(head -n1 <<<"$pkg" | cut -d: -f1)")
done
printf '%s\n' "${pkgs[@]}" | sort -u
