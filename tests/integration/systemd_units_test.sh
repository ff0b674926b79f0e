#!/usr/bin/env bash
# Installs into a temporary prefix, then checks: nothing lands outside it, ExecStart names the
# installed binary, systemd-analyze verify passes and the security exposure is within 1.5.
set -euo pipefail
build_dir=$1
prefix=$(mktemp -d /tmp/stereos-install.XXXXXX)
trap 'rm -rf "$prefix"' EXIT

cmake --install "$build_dir" --prefix "$prefix" >/dev/null
units="$prefix/lib/systemd/system"
for f in "$units/stereos-hostd.service" "$units/stereos-hostd.socket" \
         "$prefix/lib/sysusers.d/stereos-hostd.conf" "$prefix/lib/tmpfiles.d/stereos-hostd.conf" \
         "$prefix/bin/stereos-hostd"; do
    [ -e "$f" ] || { echo "missing after install: $f" >&2; exit 1; }
done
grep -qx "ExecStart=$prefix/bin/stereos-hostd" "$units/stereos-hostd.service" ||
    { echo "ExecStart does not name $prefix/bin/stereos-hostd" >&2; exit 1; }

systemd-analyze verify "$units/stereos-hostd.socket" "$units/stereos-hostd.service"

report=$(systemd-analyze security --offline=true --threshold=15 "$units/stereos-hostd.service")
score=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for stereos-hostd.service: \([0-9.]*\).*/\1/p')
echo "security exposure: $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' ||
    { echo "exposure $score is above the 1.5 goal" >&2; exit 1; }
