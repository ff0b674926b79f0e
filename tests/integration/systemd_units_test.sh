#!/usr/bin/env bash
# Installs into a temporary prefix, then checks: nothing lands outside it, ExecStart names the
# installed binary, systemd-analyze verify passes and the security exposure is within 1.5; and
# make-seal-key (with a stand-in systemd-creds) makes the key once, privately, and never replaces it.
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

# make-seal-key: a stand-in systemd-creds (it copies stdin, or fails when told to) so that the
# script's own behaviour is what is checked, without root or a TPM.
make_key="$prefix/libexec/stereos-hostd/make-seal-key"
[ "$(stat -c %a "$make_key")" = 755 ] || { echo "$make_key is not mode 0755" >&2; exit 1; }
grep -qx 'LoadCredentialEncrypted=stereos-hostd.seal-key' "$units/stereos-hostd.service" ||
    { echo "the service does not load the credential stereos-hostd.seal-key" >&2; exit 1; }
stub="$prefix/stub-bin"
mkdir -p "$stub"
cat >"$stub/systemd-creds" <<'STUB'
#!/bin/sh
[ -z "${STUB_FAIL:-}" ] || { echo "stub: failing" >&2; exit 1; }
[ "$1" = encrypt ] && [ "$2" = --name=stereos-hostd.seal-key ] && [ "$3" = --tpm2-pcrs= ] &&
    [ "$4" = - ] || exit 2
cat >"$5"
STUB
chmod 0755 "$stub/systemd-creds"
root="$prefix/root"
key="$root/etc/credstore.encrypted/stereos-hostd.seal-key"
fail() { echo "make-seal-key: $*" >&2; exit 1; }

STUB_FAIL=1 PATH="$stub:$PATH" "$make_key" "$root" 2>/dev/null && fail "succeeded while systemd-creds failed"
[ ! -e "$key" ] || fail "left a key after systemd-creds failed"
[ -z "$(ls -A "$root/etc/credstore.encrypted")" ] || fail "left a temp file after a failure"

PATH="$stub:$PATH" "$make_key" "$root" 2>/dev/null || fail "failed"
[ "$(stat -c %s "$key")" = 32 ] || fail "the key is not 32 bytes"
[ "$(stat -c %a "$key")" = 600 ] || fail "the key is mode $(stat -c %a "$key"), not 0600"
[ "$(stat -c %a "$root/etc/credstore.encrypted")" = 700 ] || fail "its directory is not 0700"
before=$(sha256sum <"$key")
PATH="$stub:$PATH" "$make_key" "$root" 2>/dev/null || fail "failed with a key in place"
[ "$(sha256sum <"$key")" = "$before" ] || fail "replaced an existing key"
[ "$(ls -A "$root/etc/credstore.encrypted")" = stereos-hostd.seal-key ] || fail "left a temp file"
echo "make-seal-key: ok"
