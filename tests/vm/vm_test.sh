#!/usr/bin/env bash
# One real-VM case: a QEMU/TCG VM whose guest daemon is the fake guest, and stereos-hostd on the
# host (or, for `vsock`, inside the VM). Each case asserts the guest's states from the event
# stream and what the guest daemon received from its own log on the serial console.
#   vm_test.sh CASE HOSTD CTL IMAGE_DIR KERNEL_DIR
# CASE: boot, reset, guest_restart, link_blip, shutdown, hostd_restart, pause, two_keys, reload,
# wild_uptime, vsock.
# Exits 77 (skip) with the reason
# when QEMU or the kernel is missing. STEREOS_VM_KEEP=1 keeps the work directory.
set -euo pipefail
# grep -q would exit at the first match, and the writer's SIGPIPE would fail the pipeline.
quiet_grep() { grep "$@" >/dev/null; }
case_name=$1 vm_hostd=$2 vm_ctl=$3 image_dir=$4 vm_kernel_dir=$5
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=harness.sh
source "$here/harness.sh"

guest_image=$image_dir/initramfs-guest.cpio.gz
vsock_image=$image_dir/initramfs-vsock.cpio.gz
secret_request="request inject_secret name=VM_SECRET"

# Boots the VM behind user-mode forwarding with the daemon on the host, and waits until the
# guest is healthy and provisioned once. Arguments: extra [guest.provision] lines.
boot_and_provision() {
    vm_require "$guest_image"
    vm_boot "$guest_image"
    hostd_start "tcp:127.0.0.1:$vm_port" "$@"
    wait_provisioned_times 1 120 || fail "the guest was not provisioned within 120 s"
    wait_until 30 vm_state_is healthy || fail "the guest did not become healthy"
    echo "[$(elapsed)] healthy and provisioned: $(vm_states_line)"
}

assert_no_state() {
    local state
    for state in "$@"; do
        if vm_states | quiet_grep -x "$state"; then
            fail "the states went through $state: $(vm_states_line)"
        fi
    done
}

case_boot() {
    boot_and_provision
    assert_no_state unresponsive disconnected
    local state
    for state in $(vm_states); do
        case "$state" in
            connecting | booting | ready | healthy) ;;
            *) fail "a normal boot went through $state: $(vm_states_line)" ;;
        esac
    done
    echo "PASS: boot read as $(vm_states_line)"
}

case_reset() {
    boot_and_provision
    local round
    for round in 1 2 3 4 5; do
        vm_qmp system_reset > "$vm_work/qmp.out" || fail "QMP system_reset failed"
        grep -q '"return"' "$vm_work/qmp.out" || fail "QMP answered $(cat "$vm_work/qmp.out")"
        wait_until 120 serial_count_at_least "stereos-vm: boot" $((round + 1)) ||
            fail "reset $round: the VM did not boot again"
        echo "[$(elapsed)] reset $round: the VM booted again"
        wait_provisioned_times $((round + 1)) 60 ||
            fail "reset $round: not provisioned again within 60 s of the boot"
        wait_until 30 eval '[ "$(provisions_done)" -ge $((round + 1)) ]' ||
            fail "reset $round: the daemon reported no provisioning done"
        echo "[$(elapsed)] reset $round: provisioned again; states $(vm_states_line)"
    done
    # Each boot's part of the console shows a full provisioning: set_config and the secret.
    local boots
    boots=$(serial_text | awk '/stereos-vm: boot/ { n++ } /request set_config/ { c[n]++ }
        /request inject_secret name=VM_SECRET/ { s[n]++ }
        END { for (i = 1; i <= n; i++) printf "%d:%d/%d ", i, c[i], s[i] }')
    echo "boot:set_config/inject_secret per boot: $boots"
    for entry in $boots; do
        case "$entry" in *:0/* | */0) fail "a boot was not fully provisioned: $boots" ;; esac
    done
    wait_until 30 vm_state_is healthy || fail "not healthy after the last reset"
    echo "PASS: 5 resets, provisioned after each; states $(vm_states_line)"
}

case_guest_restart() {
    boot_and_provision
    # The restarted daemon's start time must differ clearly from the first one: beyond the
    # whole-second granularity plus a reboot-detection tolerance of a few seconds.
    sleep 6
    vm_console 'kill $(pidof stereos-fakeguest)'
    wait_until 30 serial_count_at_least "stereos-vm: guest daemon start 2" 1 ||
        fail "the guest daemon was not restarted"
    echo "[$(elapsed)] guest daemon restarted"
    wait_provisioned_times 2 60 || fail "not provisioned again after the guest daemon restarted"
    wait_until 30 vm_state_is healthy || fail "not healthy after the restart"
    echo "PASS: re-provisioned after a guest daemon restart; states $(vm_states_line)"
}

case_link_blip() {
    boot_and_provision
    local ups_before
    ups_before=$(grep -c ' vm link up' "$vm_work/events.txt" || true)
    vm_console 'kill -USR1 $(pidof stereos-fakeguest)'
    wait_until 30 serial_count_at_least "closing every connection (SIGUSR1)" 1 ||
        fail "the guest daemon did not close its connections"
    wait_until 30 eval '[ "$(grep -c " vm link up" "$vm_work/events.txt")" -gt "$ups_before" ]' ||
        fail "the link did not come back"
    wait_until 30 vm_state_is healthy || fail "not healthy after the blip"
    echo "[$(elapsed)] link back: $(vm_states_line)"
    # Several health polls on the new link, time enough to provision if it were mistaken.
    sleep 6
    [ "$(serial_count "$secret_request")" = 1 ] ||
        fail "re-provisioned after a blip without a restart ($(serial_count "$secret_request") secrets)"
    [ "$(serial_count "stereos-vm: guest daemon start")" = 1 ] || fail "the guest daemon restarted"
    echo "PASS: a link blip without a restart was not re-provisioned; states $(vm_states_line)"
}

case_shutdown() {
    boot_and_provision
    ctl shutdown vm --reason "vm test" || fail "stereosctl shutdown failed"
    wait_until 60 eval '! vm_running' || fail "the VM did not power off"
    echo "[$(elapsed)] qemu exited: the VM powered off"
    serial_count_at_least "request shutdown" 1 || fail "the guest daemon got no shutdown"
    wait_until 20 vm_state_is shutdown || fail "the state is not shutdown"
    sleep 3  # the daemon must not take it for a lost link afterwards
    vm_state_is shutdown || fail "the state left shutdown"
    echo "PASS: powered off, state shutdown; states $(vm_states_line)"
}

# The guest daemon's log shows each provisioning item received once in all: nothing re-sent.
assert_sent_once() {
    local request
    for request in "$secret_request" "request set_config"; do
        [ "$(serial_count "$request")" = 1 ] ||
            fail "$1: the guest got \"$request\" $(serial_count "$request") times, not once"
    done
    [ "$(serial_count "stereos-vm: guest daemon start")" = 1 ] || fail "the guest daemon restarted"
}

# A restart of stereos-hostd while the guest runs on: its ledger in the state directory says
# this run of the guest daemon has everything, so it sends nothing again.
case_hostd_restart() {
    boot_and_provision
    hostd_restart
    wait_until 30 vm_state_is healthy || fail "not healthy after stereos-hostd restarted"
    echo "[$(elapsed)] healthy again after the restart: $(vm_states_line)"
    # Several health polls by the new daemon: time enough to re-send, were it mistaken.
    sleep 6
    assert_sent_once "after a restart of stereos-hostd"
    local status ledger item
    status=$(ctl --json status vm) || fail "stereosctl status failed"
    ledger=$(echo "$status" | grep -o '"ledger":{.*' | sed 's/,"transitions":.*//')
    echo "$ledger" | quiet_grep -F '"ledger":{"run":{' || fail "the ledger has no run: $ledger"
    for item in config "secret VM_SECRET"; do
        echo "$ledger" | quiet_grep -F "{\"item\":\"$item\",\"state\":\"delivered\"" ||
            fail "the ledger does not show $item delivered: $ledger"
    done
    # The new daemon's own account: everything already there, nothing sent.
    echo "$status" | quiet_grep -F '"provision":{"state":"done","sent":0,"already":2}' ||
        fail "the restarted daemon's provisioning: $(echo "$status" | grep -o '"provision":{[^}]*}')"
    echo "PASS: nothing re-sent after a restart of stereos-hostd; states $(vm_states_line)"
}

# A VM paused (QMP stop) for less than unresponsive_grace keeps its connection: unresponsive,
# then healthy again on cont, with nothing re-sent.
case_pause() {
    boot_and_provision
    local ups_before pause=20
    ups_before=$(grep -c ' vm link up' "$vm_work/events.txt" || true)
    vm_qmp stop > "$vm_work/qmp.out" || fail "QMP stop failed"
    quiet_grep '"return"' "$vm_work/qmp.out" || fail "QMP answered $(cat "$vm_work/qmp.out")"
    local paused=$SECONDS
    echo "[$(elapsed)] vm paused"
    # request_timeout 3 s, health_interval 1 s: unresponsive within a few seconds.
    wait_until 15 vm_state_is unresponsive || fail "not unresponsive while paused"
    echo "[$(elapsed)] unresponsive after $((SECONDS - paused)) s of pause"
    [ $((paused + pause - SECONDS)) -le 0 ] || sleep $((paused + pause - SECONDS))
    vm_state_is unresponsive || fail "the state left unresponsive during the pause"
    vm_qmp cont > "$vm_work/qmp.out" || fail "QMP cont failed"
    quiet_grep '"return"' "$vm_work/qmp.out" || fail "QMP answered $(cat "$vm_work/qmp.out")"
    local resumed=$SECONDS
    # Two health intervals and much slack: TCG on a busy machine.
    wait_until 20 vm_state_is healthy || fail "not healthy within 20 s of cont"
    echo "[$(elapsed)] healthy $((SECONDS - resumed)) s after cont: $(vm_states_line)"
    sleep 4  # health polls on the kept link, time enough to re-send were it mistaken
    assert_sent_once "after a pause"
    assert_no_state disconnected
    if quiet_grep ' vm link down' "$vm_work/events.txt"; then
        fail "the link went down during the pause"
    fi
    [ "$(grep -c ' vm link up' "$vm_work/events.txt")" = "$ups_before" ] ||
        fail "the link was made anew after the pause"
    # The pause moved the guest's reckoned start by its length: a daemon killed now (no clean
    # stop) must still find the run where it is, and send nothing.
    hostd_restart KILL
    wait_until 30 vm_state_is healthy || fail "not healthy after the daemon was killed"
    sleep 4
    assert_sent_once "after a pause and a killed daemon"
    echo "PASS: paused $pause s, kept the link, nothing re-sent, not after a crash either;" \
        "states $(vm_states_line)"
}

# All of a user's keys go in one request, as the one authorized_keys file stereosd rewrites.
case_two_keys() {
    local first="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirstKeyFirstKeyFirstKeyFirstKeyFirstKe first@test"
    local second="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecondKeySecondKeySecondKeySecondKeySe second@test"
    boot_and_provision "ssh_keys = [ { user = \"admin\", public_key = \"$first\" }," \
        "    { user = \"admin\", public_key = \"$second\" } ]"
    wait_until 30 serial_count_at_least "delivered inject_ssh_key user=admin" 1 ||
        fail "the guest daemon accepted no keys for admin"
    # The echo: the daemon sends the keys without a final newline, and the prompt would follow.
    vm_console "sed 's/^/authkey: /' /home/admin/.ssh/authorized_keys; echo"
    wait_until 20 eval 'serial_text | quiet_grep -xF "authkey: $second"' ||
        fail "/home/admin/.ssh/authorized_keys does not hold the second key"
    serial_text | quiet_grep -xF "authkey: $first" ||
        fail "/home/admin/.ssh/authorized_keys does not hold the first key"
    [ "$(serial_text | grep -c '^authkey: ')" = 2 ] ||
        fail "authorized_keys holds other lines: $(serial_text | grep '^authkey: ')"
    [ "$(serial_count "request inject_ssh_key user=admin")" = 1 ] ||
        fail "the keys came in $(serial_count "request inject_ssh_key") requests, not one"
    [ "$(serial_count "delivered inject_ssh_key user=admin keys=2")" = 1 ] ||
        fail "no single delivery of both keys: $(serial_text | grep 'delivered inject_ssh_key')"
    echo "PASS: both keys in one request, both in authorized_keys; states $(vm_states_line)"
}

# A reload (SIGHUP) that changes only health_interval applies it to the live link: no new link,
# nothing sent. A rotated secret file is then a changed item, sent alone on the same link.
case_reload() {
    vm_require "$guest_image"
    vm_boot "$guest_image"
    # The daemon starts once the guest daemon listens: a handshake that failed before would leave
    # its get_health in user-mode networking's buffer, reaching the guest seconds later as an
    # extra poll, and the polls are counted here.
    wait_until 120 serial_count_at_least "listening tcp:" 1 || fail "the guest daemon did not listen"
    hostd_start "tcp:127.0.0.1:$vm_port"
    wait_provisioned_times 1 60 || fail "the guest was not provisioned within 60 s"
    wait_until 30 vm_state_is healthy || fail "the guest did not become healthy"
    local ups sets secrets delivered polls since
    ups=$(link_ups)
    sets=$(serial_count "request set_config")
    secrets=$(serial_count "$secret_request")
    delivered=$(serial_count "delivered inject_secret name=VM_SECRET")
    polls=$(serial_count "request get_health")
    vm_health_interval=3s
    hostd_write_config
    since=$SECONDS
    hostd_reload "health_interval 1s -> 3s"
    hostd_log_since_mark | quiet_grep -F "vm: reload: new timings applied to the live link" ||
        fail "the daemon did not apply the new timings to the live link"
    hostd_log_since_mark | quiet_grep -F " 0 with a new endpoint" ||
        fail "the reload took the guest for one with a new endpoint"
    sleep 6  # health polls at the new interval, time enough to re-send were it mistaken
    polls=$(($(serial_count "request get_health") - polls))
    echo "[$(elapsed)] $polls health polls in the $((SECONDS - since)) s since the SIGHUP"
    # The reload's own poll, then one each 3 s: at most 4 (the old 1 s would give 6 or more).
    [ "$polls" -le 4 ] || fail "$polls health polls in $((SECONDS - since)) s: not each 3 s"
    [ "$(serial_count "request set_config")" = "$sets" ] || fail "the config was sent again"
    [ "$(serial_count "$secret_request")" = "$secrets" ] || fail "the secret was sent again"
    [ "$(link_ups)" = "$ups" ] || fail "the link was made anew by a reload of timings only"
    vm_state_is healthy || fail "not healthy after the reload: $(vm_states_line)"

    write_secret vm-secret-rotated
    hostd_reload "the secret file rotated"
    wait_until 30 serial_count_at_least "delivered inject_secret name=VM_SECRET" $((delivered + 1)) ||
        fail "the guest daemon did not get the rotated secret"
    wait_until 10 eval 'hostd_log_since_mark |
            quiet_grep -F "vm: provisioned: 1 items sent, 1 already delivered"' ||
        fail "the daemon did not report the rotated secret alone sent"
    sleep 3  # time enough for a stray second send
    [ "$(serial_count "$secret_request")" = $((secrets + 1)) ] ||
        fail "the rotated secret came $(($(serial_count "$secret_request") - secrets)) times, not once"
    [ "$(serial_count "request set_config")" = "$sets" ] ||
        fail "the unchanged config was sent again with the rotated secret"
    [ "$(link_ups)" = "$ups" ] || fail "the link was made anew for the rotated secret"
    [ "$(serial_count "stereos-vm: guest daemon start")" = 1 ] || fail "the guest daemon restarted"
    echo "PASS: timings reloaded on the live link, the rotated secret alone sent; states $(vm_states_line)"
}

# A guest whose health answers alternate between uptimes 5 and 2^63-1 (stereos.uptime_sequence,
# the fake guest's --uptime-sequence): each wild answer is a protocol error that resets the link,
# and each 5 after a reconnect is a start earlier than the guest's last word, never a restart.
# Provisioned once, then never again: no storm.
case_wild_uptime() {
    local sequence=5,9223372036854775807
    vm_require "$guest_image"
    vm_boot "$guest_image" "stereos.uptime_sequence=$sequence"
    hostd_start "tcp:127.0.0.1:$vm_port"
    wait_until 60 serial_count_at_least "guest daemon start 1 (--uptime-sequence $sequence)" 1 ||
        fail "the guest daemon did not start with --uptime-sequence $sequence"
    # The handshake may get either value (a first connect may fail and retry).
    wait_provisioned_times 1 120 || fail "the guest was not provisioned within 120 s"
    echo "[$(elapsed)] provisioned: $(vm_states_line)"
    sleep 12  # a dozen 1 s polls, every other one wild
    local log=$vm_work/hostd.log resets
    resets=$(grep -c "protocol error, resetting the connection" "$log" || true)
    echo "[$(elapsed)] $resets protocol error resets, $(link_ups) links; states $(vm_states_line)"
    [ "$resets" -ge 2 ] || fail "$resets protocol error resets, not at least 2"
    quiet_grep -F "uptime_seconds: 9223372036854775807 is outside 0.." "$log" ||
        fail "the daemon log does not name the wild uptime"
    # Links made again after the resets, each time without taking the guest for restarted.
    [ "$(link_ups)" -ge 3 ] || fail "only $(link_ups) links were made: the resets were not retried"
    if quiet_grep -F "guest restarted" "$log"; then
        fail "a wild uptime was taken for a restart: $(grep -F "guest restarted" "$log" | head -3)"
    fi
    assert_sent_once "with wild uptimes"
    [ "$(serial_count "delivered inject_secret name=VM_SECRET")" = 1 ] ||
        fail "the secret was delivered $(serial_count "delivered inject_secret") times"
    vm_states | quiet_grep -x healthy || fail "never healthy: $(vm_states_line)"
    kill -0 "$vm_hostd_pid" || fail "stereos-hostd died"
    echo "PASS: wild uptimes reset the link $resets times, provisioned once; states $(vm_states_line)"
}

# The daemon and the guest daemon in one VM over AF_VSOCK loopback (CID 1); tests/vm/vsock-case
# runs the steps inside and reports each on the console.
case_vsock() {
    vm_require "$vsock_image"
    vm_forward=0 vm_boot "$vsock_image" stereos.listen=vsock:ANY:1024 stereos.run=vsock-case
    wait_until 200 serial_count_at_least "vsock-case: done" 1 || fail "vsock-case did not finish"
    serial_text | grep '^vsock-case:' || true
    serial_count_at_least "vsock-case: FAIL" 1 && fail "a step failed inside the VM"
    local step
    for step in ready ping health secret restart reprovisioned; do
        serial_count_at_least "vsock-case: ok $step" 1 || fail "step $step did not pass"
    done
    serial_count_at_least "request inject_secret name=VSOCK_API_SECRET" 1 ||
        fail "the guest daemon's log shows no secret from the API"
    [ "$(serial_count "$secret_request")" -ge 2 ] ||
        fail "the guest daemon's log shows fewer than 2 provisionings"
    local value
    for value in vsock-secret-value vsock-api-secret; do
        [ "$(serial_count "$value")" = 0 ] || fail "a secret value reached the console"
    done
    echo "PASS: AF_VSOCK end to end"
}

# The guest daemon's console log names secrets; neither it nor the daemon's log, events or
# output may carry a value, the rotated ones' included.
assert_no_secret_value() {
    local value file
    for value in "${vm_secret_values[@]}"; do
        for file in serial.log hostd.log events.txt; do
            if [ -f "$vm_work/$file" ] && grep -qF -- "$value" "$vm_work/$file"; then
                fail "the secret value appears in $file"
            fi
        done
    done
}

"case_$case_name"
assert_no_secret_value
