#!/usr/bin/env bash
# Debian packages the container image and image-distribution tests need (tests/deploy): podman and
# buildah build and run the image, mmdebstrap makes its base without a registry, containerd/ctr and
# openssh play the cluster nodes. Idempotent: nothing is run when every package is installed. Needs
# root and apt-get; elsewhere it only says what is missing (those tests then skip, or fail under CI).
set -euo pipefail
packages=(podman buildah mmdebstrap containerd runc openssh-server openssh-client uidmap gzip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-container-tools: not installed (needs root and apt-get): ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
