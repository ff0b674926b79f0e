#!/usr/bin/env bash
# The journald sink against a real systemd-journald in a private mount namespace: GUEST=
# filters one guest's records, messages name their guest, CODE_FILE/CODE_FUNC read well,
# transitions carry MESSAGE_ID and GUEST_STATE, priorities map from severity, an API change
# leaves an audit record, and a provisioned secret's value appears nowhere in the journal.
# With CATALOG, `journalctl -x` must explain the daemon's transitions from that catalog file.
#   journald_test.sh HOSTD_BINARY FAKEGUEST_BINARY [CATALOG]
set -euo pipefail
# grep -q would exit at the first match, and the writer's SIGPIPE would fail the pipeline.
quiet_grep() { grep "$@" >/dev/null; }
hostd=$1 fakeguest=$2 catalog=${3:-}
skip=77

if [ "${1:-}" != --inside ] && [ "${STEREOS_JOURNALD_INSIDE:-}" != 1 ]; then
    if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root to run a private journald"; exit $skip; fi
    command -v unshare >/dev/null || { echo "SKIP: unshare not installed"; exit $skip; }
    [ -x /lib/systemd/systemd-journald ] || { echo "SKIP: systemd-journald not installed"; exit $skip; }
    if unshare --mount --fork true 2>/dev/null; then
        STEREOS_JOURNALD_INSIDE=1 exec unshare --mount --fork bash "$0" "$@"
    fi
    # In a chroot "/" is not a mount point and unshare cannot make it private: keep the
    # propagation and make /run private inside instead.
    STEREOS_JOURNALD_INSIDE=1 STEREOS_JOURNALD_PRIVATE_RUN=1 \
        exec unshare --mount --propagation unchanged --fork bash "$0" "$@"
fi
if [ "${STEREOS_JOURNALD_PRIVATE_RUN:-}" = 1 ]; then
    mount --make-rprivate /run 2>/dev/null ||
        { echo "SKIP: cannot make /run a private mount here"; exit $skip; }
fi

work=$(mktemp -d /tmp/stereos-journal.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
/lib/systemd/systemd-journald &
pids+=($!)
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
[ -S /run/systemd/journal/socket ] || fail "journald did not start"
journal=/run/log/journal
# A bare root (no usable machine id) leaves journald without a journal to write: that is the
# environment, not our sink, so skip with the reason.
echo "stereos journald probe" | systemd-cat -t stereos-probe 2>/dev/null || true
for _ in $(seq 100); do [ -d "$journal" ] && break; sleep 0.05; done
if [ ! -d "$journal" ]; then
    echo "SKIP: journald opened no runtime journal here (machine id: $(cat /etc/machine-id 2>/dev/null || echo none))"
    exit $skip
fi

secret="s3cr3t-journal-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s' "$secret" > "$work/secret"
printf 'mixtape = "base"\ntoken = "%s-in-config"\n' "$secret" > "$work/jcard.toml"

"$fakeguest" --listen "tcp:127.0.0.1:0" --health-state healthy > "$work/guest.out" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q '^listening ' "$work/guest.out" && break; sleep 0.05; done
endpoint=$(sed -n 's/^listening //p' "$work/guest.out" | head -1)
[ -n "$endpoint" ] || fail "fake guest did not start: $(cat "$work/guest.out")"

cat > "$work/config.toml" <<TOML
[daemon]
api_socket = "$work/api.sock"
api_group = ""
state_dir = "$work/state"
log_level = "debug"

[[guest]]
name = "vm1"
endpoint = "$endpoint"
[guest.provision]
config_file = "$work/jcard.toml"
secrets = [ { name = "API_KEY", file = "$work/secret" } ]

[[guest]]
name = "vm2"
endpoint = "unix:$work/nobody-listens.sock"
TOML

"$hostd" --config "$work/config.toml" --log journal > "$work/hostd.out" 2>&1 &
hostd_pid=$!
pids+=($hostd_pid)

# Wait until vm1 is provisioned and healthy, as the journal tells it.
for _ in $(seq 300); do
    if journalctl -D "$journal" GUEST=vm1 -o cat 2>/dev/null | quiet_grep '^vm1: provisioned' &&
       journalctl -D "$journal" GUEST=vm1 -o cat 2>/dev/null | quiet_grep -- '-> healthy'; then
        break
    fi
    sleep 0.05
done
# A change through the API (here one that finds no guest) leaves an audit record.
curl -s -o /dev/null --unix-socket "$work/api.sock" -X DELETE http://localhost/v1/guests/ghost ||
    fail "curl could not reach the API"
for _ in $(seq 100); do
    journalctl -D "$journal" API_PEER_UID=0 -o cat 2>/dev/null | quiet_grep 'DELETE /v1/guests/ghost' && break
    sleep 0.05
done
kill -TERM $hostd_pid
wait $hostd_pid || fail "daemon exited with $?"

vm1=$(journalctl -D "$journal" GUEST=vm1 -o json)
[ -n "$vm1" ] || fail "no records with GUEST=vm1"
lines=$(printf '%s\n' "$vm1" | wc -l)
[ "$(printf '%s\n' "$vm1" | grep -c '"GUEST":"vm1"')" = "$lines" ] || fail "GUEST=vm1 let other records through"
printf '%s\n' "$vm1" | quiet_grep '"MESSAGE":"vm1: provisioned: ' || fail "vm1 was not provisioned: $(journalctl -D $journal -o cat)"
printf '%s\n' "$vm1" | quiet_grep '"SYSLOG_IDENTIFIER":"stereos-hostd"' || fail "no SYSLOG_IDENTIFIER"
printf '%s\n' "$vm1" | quiet_grep '"CODE_FILE":"daemon/guest/managed_guest.cpp"' || fail "no CODE_FILE relative to the source tree"
printf '%s\n' "$vm1" | quiet_grep '"CODE_LINE":"[0-9]*"' || fail "no CODE_LINE"

printf '%s\n' "$vm1" | quiet_grep '"CODE_FUNC":"stereos::daemon::managed_guest::[a-z_]*' ||
    fail "no readable CODE_FUNC"
if printf '%s\n' "$vm1" | quiet_grep '"CODE_FUNC":"[^"]*[( ]'; then fail "a CODE_FUNC is not just a name"; fi
if journalctl -D "$journal" -o cat | quiet_grep -x 'link up'; then fail "a line does not name its guest"; fi

# The audit record: caller, route, guest and status, at notice.
audit=$(journalctl -D "$journal" API_PEER_UID=0 -o json)
printf '%s\n' "$audit" | grep '"MESSAGE":"ghost: DELETE /v1/guests/ghost by uid 0 (root), gid 0, pid [0-9]*: 404 Not Found"' |
    grep '"REQUEST":"DELETE /v1/guests/ghost"' | grep '"GUEST":"ghost"' | grep '"API_PEER_USER":"root"' |
    grep '"API_PEER_GID":"0"' | grep '"API_PEER_PID":"[0-9]*"' | grep '"API_STATUS":"404"' |
    quiet_grep '"PRIORITY":"5"' || fail "no complete audit record: $audit"

transitions=$(journalctl -D "$journal" MESSAGE_ID=7d9a3c4e1b2f4a6c8e0d5f1a2b3c4d5e -o json)
[ "$(printf '%s\n' "$transitions" | grep -c '"GUEST_STATE":')" -ge 3 ] || fail "transitions lack GUEST_STATE"
printf '%s\n' "$transitions" | grep '"GUEST":"vm1"' | quiet_grep '"GUEST_STATE":"healthy"' || fail "no healthy transition for vm1"
# vm2 never answers: it stays connecting, failed attempts are no transitions.
printf '%s\n' "$transitions" | grep '"GUEST":"vm2"' | quiet_grep '"GUEST_STATE":"connecting"' || fail "no connecting transition for vm2"
if printf '%s\n' "$transitions" | grep '"GUEST":"vm2"' | quiet_grep '"GUEST_STATE":"disconnected"'; then fail "vm2 never had a link, yet a disconnected transition was logged"; fi

# Priorities: info for "link up", warning (4) for vm2's connect failures.
printf '%s\n' "$vm1" | grep '"MESSAGE":"vm1: link up' | quiet_grep '"PRIORITY":"6"' || fail "link up is not info"
journalctl -D "$journal" GUEST=vm2 -o json | grep '"MESSAGE":"vm2: cannot connect' | quiet_grep '"PRIORITY":"4"' || fail "connect failure is not a warning"

# The secret and the config's values never reach the journal, in any field.
if journalctl -D "$journal" -o export | quiet_grep -a -- "$secret"; then fail "the secret value is in the journal"; fi
if grep -a -q "$secret" "$work/hostd.out"; then fail "the secret value is in the daemon's output"; fi
# The catalog explains vm1's real transition records in `journalctl -x`, which reads the catalog
# database at /var/lib/systemd/catalog whatever --root says: the database is built in a private
# root and mounted there in this mount namespace only, so the machine's own is left alone.
catalog_note=""
if [ -n "$catalog" ] && [ "${STEREOS_JOURNALD_PRIVATE_RUN:-}" = 1 ]; then
    catalog_note=", journalctl -x not checked: / cannot be made a private mount here"
elif [ -n "$catalog" ]; then
    root=$work/root
    mkdir -p "$root/usr/lib/systemd/catalog"
    cp "$catalog" "$root/usr/lib/systemd/catalog/stereos-hostd.catalog"
    journalctl --root="$root" --update-catalog || fail "journalctl --update-catalog failed"
    mount -t tmpfs tmpfs /var/lib/systemd
    mkdir /var/lib/systemd/catalog
    cp "$root/var/lib/systemd/catalog/database" /var/lib/systemd/catalog/database
    explained=$(journalctl -D "$journal" -x GUEST=vm1 GUEST_STATE=healthy \
        MESSAGE_ID=7d9a3c4e1b2f4a6c8e0d5f1a2b3c4d5e)
    printf '%s\n' "$explained" | quiet_grep 'vm1: state connecting -> healthy' ||
        fail "no vm1 transition to healthy in the journal: $explained"
    printf '%s\n' "$explained" | quiet_grep 'Subject: Guest vm1 changed state to healthy' ||
        fail "journalctl -x shows no catalog subject for vm1's transition: $explained"
    printf '%s\n' "$explained" | quiet_grep 'Everything about this guest: journalctl -u stereos-hostd GUEST=vm1' ||
        fail "journalctl -x shows no catalog text for vm1's transition: $explained"
    catalog_note=", its transitions explained by journalctl -x"
fi
echo "journald sink: OK ($lines records for vm1$catalog_note)"
