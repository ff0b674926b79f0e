#!/usr/bin/env bash
# The vm.images test: makes the two initramfs images the VM cases boot, from the built programs.
#   make-images.sh KERNEL_DIR IMAGE_DIR FAKEGUEST HOSTD CTL
# initramfs-guest: the fake guest as the guest daemon; initramfs-vsock: also stereos-hostd,
# stereosctl and tests/vm/vsock-case. Exits 77 (skip) when busybox or the kernel is missing.
set -euo pipefail
kernel_dir=$1 image_dir=$2 fakeguest=$3 hostd=$4 ctl=$5
here=$(cd "$(dirname "$0")" && pwd)
command -v busybox >/dev/null ||
    { echo "SKIP: busybox not installed (scripts/install-deps installs busybox-static)"; exit 77; }
compgen -G "$kernel_dir/boot/vmlinuz-*" >/dev/null ||
    { echo "SKIP: no kernel in $kernel_dir (tests/vm/fetch-kernel fetches it)"; exit 77; }
"$here/make-initramfs" "$image_dir/initramfs-guest.cpio.gz" "$kernel_dir" "$fakeguest"
"$here/make-initramfs" "$image_dir/initramfs-vsock.cpio.gz" "$kernel_dir" "$fakeguest" \
    "$hostd" "$ctl" -- "$here/vsock-case"
ls -l "$image_dir"
