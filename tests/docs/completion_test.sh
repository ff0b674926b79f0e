#!/usr/bin/env bash
# The bash completion of stereosctl, sourced into bash and driven through COMP_WORDS/COMP_CWORD
# as bash drives it: commands and each command's options agree with --help; guest names come
# from a real daemon with real (fake-guest) guests, found through --socket, --socket=, or
# $STEREOS_HOSTD_SOCKET; with the daemon stopped (SIGSTOP) or gone, completing a guest name
# offers nothing, prints nothing and returns within the completion's 1 s timeout.
#   completion_test.sh STEREOSCTL HOSTD FAKEGUEST COMPLETION
set -euo pipefail
stereosctl=$1 hostd=$2 fakeguest=$3 completion=$4
fail() { echo "FAIL: $*" >&2; exit 1; }

work=$(mktemp -d /tmp/stereos-completion.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        { kill -CONT "$p"; kill -9 "$p"; wait "$p"; } 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
# Completion runs "stereosctl" as the user typed it: here, found on PATH.
mkdir "$work/bin"
ln -s "$(realpath "$stereosctl")" "$work/bin/stereosctl"
export PATH="$work/bin:$PATH"
unset STEREOS_HOSTD_SOCKET

# complete WORD... : the candidates for the last word, sorted, one a line; the completion's
# stderr goes to $work/complete.err.
complete() {
    bash --norc --noprofile -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        _stereosctl || exit 1
        [ ${#COMPREPLY[@]} -eq 0 ] || printf "%s\n" "${COMPREPLY[@]}"' \
        complete "$completion" stereosctl "$@" 2>"$work/complete.err" | sort
}
expect() {  # expect WHAT EXPECTED ACTUAL
    [ "$2" = "$3" ] || fail "$1: expected [$(echo $2)], got [$(echo $3)]"
}
sorted() { printf '%s\n' "$@" | sort; }
help_section() {  # the first words of one section of a --help text, sorted
    awk -v want="$1" '/^[A-Za-z]+:$/ { in_section = ($0 == want); next }
                      in_section && /^  [^ ]/ { print $1 }' | tr ',' '\n' | grep -v '^$' | sort
}

# Commands and options, against --help.
commands=$(stereosctl --help | help_section Subcommands:)
[ "$(printf '%s\n' "$commands" | wc -l)" -ge 10 ] || fail "stereosctl --help lists no commands"
expect "commands" "$commands" "$(complete '')"
expect "commands starting with s" "$(printf '%s\n' "$commands" | grep '^s')" "$(complete s)"
expect "global options" "$(stereosctl --help | help_section Options:)" "$(complete -)"
for command in $commands; do
    expect "options of $command" "$(stereosctl "$command" --help | help_section Options:)" \
        "$(complete "$command" -)"
done
expect "--fs values" "$(sorted 9p virtiofs)" "$(complete mount vm1 share0 /mnt/x --fs '')"
expect "--fs= values (split at =)" "virtiofs" "$(complete mount vm1 share0 /mnt/x --fs = v)"
expect "an option's value is no argument" "healthy" "$(complete wait --timeout 5s vm1 he)"
expect "wait states" "$(sorted connecting booting ready healthy degraded unresponsive \
    disconnected shutting_down shutdown)" "$(complete wait vm1 '')"
touch "$work/jcard.toml" "$work/jcard-old.toml"
expect "config FILE" "$(sorted "$work/jcard.toml" "$work/jcard-old.toml")" \
    "$(complete config vm1 "$work/jc")"
expect "--from-file" "$work/jcard.toml" "$(complete secret vm1 KEY --from-file "$work/jcard.t")"

# A daemon with two fake guests from its config and one added at run time.
for name in alpha beta; do
    "$fakeguest" --listen "unix:$work/$name.sock" --health-state healthy >"$work/$name.out" 2>&1 &
    pids+=($!)
done
cat >"$work/config.toml" <<TOML
[daemon]
api_socket = "$work/api.sock"
api_group = ""
state_dir = "$work/state"

[[guest]]
name = "vm-alpha"
endpoint = "unix:$work/alpha.sock"

[[guest]]
name = "vm-beta"
endpoint = "unix:$work/beta.sock"
TOML
"$hostd" --config "$work/config.toml" --log stderr >"$work/hostd.out" 2>&1 &
hostd_pid=$!
pids+=($hostd_pid)
socket=$work/api.sock
for _ in $(seq 200); do
    [ "$(stereosctl --socket "$socket" ls 2>/dev/null | grep -c ' healthy ')" = 2 ] && break
    sleep 0.05
done
[ "$(stereosctl --socket "$socket" ls | grep -c ' healthy ')" = 2 ] ||
    fail "the guests did not become healthy: $(stereosctl --socket "$socket" ls 2>&1; cat "$work/hostd.out")"
stereosctl --socket "$socket" add vm-gamma "unix:$work/gamma.sock" >/dev/null ||
    fail "could not add a runtime guest"

guests=$(sorted vm-alpha vm-beta vm-gamma)
expect "guests via --socket" "$guests" "$(complete --socket "$socket" status '')"
expect "guests via --socket= (split at =)" "$guests" "$(complete --socket = "$socket" ping '')"
expect "guests via --socket=PATH (one word)" "$guests" "$(complete "--socket=$socket" health '')"
expect "guests via \$STEREOS_HOSTD_SOCKET" "$guests" \
    "$(STEREOS_HOSTD_SOCKET=$socket complete events '')"
expect "guests starting with vm-b" "vm-beta" "$(complete --socket "$socket" --json rm vm-b)"
expect "guests after an option" "$guests" "$(complete --socket "$socket" shutdown --reason x '')"
expect "no guest name for add" "" "$(complete --socket "$socket" add '')"
expect "no guest for a second argument" "" "$(complete --socket "$socket" ping vm-alpha '')"
[ ! -s "$work/complete.err" ] || fail "the completion wrote to stderr: $(cat "$work/complete.err")"

# Unreachable: a stopped daemon (the socket accepts, nobody answers), then no daemon at all.
# Nothing offered, nothing printed, exit 0, within the 1 s timeout (generous bounds: busy machine).
unreachable() {  # unreachable WHAT MAX_MS
    local start end out
    start=$(date +%s%N)
    out=$(complete --socket "$socket" status '') || fail "$1: the completion function failed"
    end=$(date +%s%N)
    [ -z "$out" ] || fail "$1: offered [$out]"
    [ ! -s "$work/complete.err" ] || fail "$1: wrote to stderr: $(cat "$work/complete.err")"
    [ $(((end - start) / 1000000)) -lt "$2" ] || fail "$1: took $(((end - start) / 1000000)) ms"
    echo "$1: nothing offered in $(((end - start) / 1000000)) ms"
}
kill -STOP $hostd_pid
unreachable "daemon stopped" 5000
kill -CONT $hostd_pid
kill -TERM $hostd_pid
wait $hostd_pid || fail "the daemon exited with $?"
unreachable "daemon gone" 3000
rm -f "$socket"
unreachable "no socket" 3000
echo "completion: OK"
