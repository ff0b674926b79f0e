#!/usr/bin/env bash
# The journald catalog documents every MESSAGE_ID the daemon logs, and only those: each id in the
# source has an entry, journalctl indexes the file (--update-catalog in a private root, never the
# machine's) and shows each entry's subject and text (--list-catalog, --dump-catalog).
#   catalog_test.sh SOURCE_DIR CATALOG
set -euo pipefail
# grep -q would exit at the first match, and the writer's SIGPIPE would fail the pipeline.
quiet_grep() { grep "$@" >/dev/null; }
source_dir=$1 catalog=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v journalctl >/dev/null || { echo "SKIP: journalctl not installed"; exit 77; }

# MESSAGE_IDs are 128-bit hex literals on lines that name a message id.
source_ids=$(grep -rhiE --include='*.cpp' --include='*.hpp' 'message_?id' \
    "$source_dir/daemon" "$source_dir/config" "$source_dir/protocol" "$source_dir/transport" |
    grep -oE '"[0-9a-f]{32}"' | tr -d '"' | sort -u || true)
[ -n "$source_ids" ] || fail "found no MESSAGE_ID in the source: has its declaration changed?"
catalog_ids=$(sed -nE 's/^-- ([0-9a-f]{32})$/\1/p' "$catalog" | sort -u)
undocumented=$(comm -23 <(printf '%s\n' "$source_ids") <(printf '%s\n' "$catalog_ids"))
[ -z "$undocumented" ] || fail "MESSAGE_IDs logged without a catalog entry in $catalog: $undocumented"
stale=$(comm -13 <(printf '%s\n' "$source_ids") <(printf '%s\n' "$catalog_ids"))
[ -z "$stale" ] || fail "catalog entries for MESSAGE_IDs the source no longer logs: $stale"

root=$(mktemp -d /tmp/stereos-catalog.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd/catalog"
cp "$catalog" "$root/usr/lib/systemd/catalog/stereos-hostd.catalog"
journalctl --root="$root" --update-catalog || fail "journalctl --update-catalog rejected $catalog"
listed=$(journalctl --root="$root" --list-catalog)
for id in $source_ids; do
    subject=$(awk -v id="$id" '$0 == "-- " id { found = 1; next }
                               found && /^Subject: / { sub(/^Subject: /, ""); print; exit }' "$catalog")
    [ -n "$subject" ] || fail "catalog entry $id has no Subject:"
    printf '%s\n' "$listed" | quiet_grep -xF "$id stereos-hostd: $subject" ||
        fail "journalctl --list-catalog does not list $id with its subject: $listed"
    shown=$(journalctl --root="$root" --dump-catalog "$id")
    # The entry's own text, from its first blank line to the next entry, must all be shown.
    awk -v id="$id" '$0 == "-- " id { found = 1; next } found && /^-- / { exit }
                     found && body { print } found && /^$/ { body = 1 }' "$catalog" | grep -v '^$' |
        while IFS= read -r line; do
            printf '%s\n' "$shown" | quiet_grep -xF -- "$line" ||
                fail "journalctl --dump-catalog $id lacks the line: $line"
        done
    [ "$(printf '%s\n' "$shown" | wc -l)" -ge 10 ] || fail "entry $id says too little: $shown"
done
echo "catalog: $(printf '%s\n' "$source_ids" | wc -l) MESSAGE_IDs documented and shown by journalctl"
