# The real-VM test harness, sourced by vm_test.sh: boots a QEMU/TCG VM from the initramfs that
# tests/vm/make-initramfs builds, drives it through QMP and its serial console, and runs
# stereos-hostd on the host with its event stream captured by `stereosctl events`.
# Every process it starts is killed when the test script exits.

skip=77
vm_pids=()
vm_work=$(mktemp -d /tmp/stereos-vm.XXXXXX)
vm_keep_work=${STEREOS_VM_KEEP:-0}

vm_cleanup() {
    local pid
    for pid in "${vm_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${vm_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$vm_keep_work" = 1 ]; then echo "kept $vm_work" >&2; else rm -rf "$vm_work"; fi
}
trap vm_cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    vm_show_logs >&2
    exit 1
}

vm_show_logs() {
    echo "--- states: $(vm_states | tr '\n' ' ')"
    [ -f "$vm_work/events.txt" ] && { echo "--- events"; cat "$vm_work/events.txt"; }
    [ -f "$vm_work/hostd.log" ] && { echo "--- stereos-hostd (last 40 lines)"; tail -n 40 "$vm_work/hostd.log"; }
    [ -f "$vm_work/serial.log" ] && { echo "--- serial console"; tr -d '\r' < "$vm_work/serial.log" | tail -n 80; }
    [ -f "$vm_work/qemu.log" ] && { echo "--- qemu"; cat "$vm_work/qemu.log"; }
    true
}

elapsed() { echo "$SECONDS s"; }

# Skips the test (exit 77) with the reason when this machine cannot run the VMs.
vm_require() {
    local initramfs=$1
    command -v qemu-system-x86_64 >/dev/null ||
        { echo "SKIP: qemu-system-x86_64 not installed (scripts/install-deps installs it)"; exit $skip; }
    command -v socat >/dev/null || { echo "SKIP: socat not installed"; exit $skip; }
    [ -f "$initramfs" ] ||
        { echo "SKIP: no initramfs $initramfs (no kernel in the cache: tests/vm/fetch-kernel)"; exit $skip; }
    compgen -G "$vm_kernel_dir/boot/vmlinuz-*" >/dev/null ||
        { echo "SKIP: no kernel in $vm_kernel_dir (tests/vm/fetch-kernel)"; exit $skip; }
}

# Waits up to SECONDS for COMMAND... to succeed (polled every 0.2 s).
wait_until() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

serial_text() { tr -d '\r' < "$vm_work/serial.log" 2>/dev/null || true; }
# How many serial console lines contain TEXT (a fixed string).
serial_count() { serial_text | grep -cF -- "$1" || true; }
serial_count_at_least() { [ "$(serial_count "$1")" -ge "$2" ]; }

# Boots the VM. Arguments: the initramfs, then extra kernel parameters. With a TCP forward the
# guest's port 1024 is reachable at tcp:127.0.0.1:$vm_port.
vm_boot() {
    local initramfs=$1
    shift
    local kernel attempt
    kernel=$(compgen -G "$vm_kernel_dir/boot/vmlinuz-*" | head -1)
    # A port free when checked may be taken before QEMU binds it (another case's connections
    # run beside it): QEMU then exits, and the boot is tried again on another port.
    for attempt in 1 2 3 4 5; do
        local network=()
        if [ "${vm_forward:-1}" = 1 ]; then
            # A free port now; QEMU owns it from its start, as on a real host.
            vm_port=$(free_tcp_port)
            network=(-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$vm_port-:1024"
                -device virtio-net-pci,netdev=net0,romfile=)
        fi
        rm -f "$vm_work/qmp.sock" "$vm_work/serial.sock"
        qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nodefaults -no-user-config -display none \
            -kernel "$kernel" -initrd "$initramfs" \
            -append "console=ttyS0 quiet panic=-1 mitigations=off no_timer_check $*" \
            -chardev "socket,id=serial0,path=$vm_work/serial.sock,server=on,wait=off,logfile=$vm_work/serial.log" \
            -serial chardev:serial0 \
            -qmp "unix:$vm_work/qmp.sock,server=on,wait=off" \
            "${network[@]}" > "$vm_work/qemu.log" 2>&1 &
        vm_qemu_pid=$!
        vm_pids+=("$vm_qemu_pid")
        wait_until 20 test -S "$vm_work/qmp.sock" || fail "qemu did not start"
        # The forwarding rule is set up after the QMP socket: give a failure time to show.
        sleep 0.5
        if vm_running && ! grep -q "Could not set up host forwarding" "$vm_work/qemu.log"; then
            echo "[$(elapsed)] vm booting (qemu pid $vm_qemu_pid${vm_port:+, guest port 1024 at 127.0.0.1:$vm_port})"
            return 0
        fi
        echo "[$(elapsed)] qemu could not start on port ${vm_port:-?} (attempt $attempt): $(tr '\n' ' ' < "$vm_work/qemu.log")"
        kill -9 "$vm_qemu_pid" 2>/dev/null || true
        wait "$vm_qemu_pid" 2>/dev/null || true
        vm_forget_pid "$vm_qemu_pid"
    done
    fail "qemu did not start in 5 attempts"
}

# A port nothing listens on now (QEMU fails to start if it is taken meanwhile).
free_tcp_port() {
    local port
    for _ in $(seq 50); do
        # Below Linux's ephemeral range (32768-60999), where connections take their ports.
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    fail "no free TCP port found"
}

vm_running() { kill -0 "$vm_qemu_pid" 2>/dev/null; }

# Sends one QMP command (e.g. system_reset) and prints QEMU's answers.
vm_qmp() {
    printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$1" |
        socat -t 2 - "UNIX-CONNECT:$vm_work/qmp.sock"
}

# Types a command line into the shell on the VM's serial console.
vm_console() {
    printf '%s\n' "$*" | socat -t 1 - "UNIX-CONNECT:$vm_work/serial.sock" >/dev/null
}

# Starts stereos-hostd with one guest "vm" at ENDPOINT, provisioned with a config file and a
# secret, and short timeouts so that the cases run quickly; then follows its events. Further
# arguments are extra lines for the [guest.provision] table. $vm_hostd_pid is the daemon.
hostd_start() {
    vm_endpoint=$1
    shift
    vm_provision_lines=("$@")
    printf 'mixtape = "vm-test"\n' > "$vm_work/jcard.toml"
    write_secret vm-secret-value
    hostd_write_config
    hostd_run
    echo "[$(elapsed)] stereos-hostd running, guest vm at $vm_endpoint"
}

# Writes config.toml from $vm_endpoint, $vm_health_interval and $vm_provision_lines (extra
# [guest.provision] lines): a case changes one and reloads. Renamed into place, so that a reload
# never reads half a file.
vm_health_interval=1s
vm_provision_lines=()
hostd_write_config() {
    cat > "$vm_work/config.toml.new" <<TOML
[daemon]
api_socket = "$vm_work/api.sock"
api_group = ""
state_dir = "$vm_work/state"
log_level = "debug"
request_timeout = "3s"
connect_timeout = "2s"
keepalive_interval = "2s"
health_interval = "$vm_health_interval"
reconnect_max = "1s"

[[guest]]
name = "vm"
endpoint = "$vm_endpoint"
[guest.provision]
config_file = "$vm_work/jcard.toml"
secrets = [ { name = "VM_SECRET", file = "$vm_work/secret" } ]
TOML
    [ ${#vm_provision_lines[@]} -eq 0 ] ||
        printf '%s\n' "${vm_provision_lines[@]}" >> "$vm_work/config.toml.new"
    mv "$vm_work/config.toml.new" "$vm_work/config.toml"
}

# Writes a new random value, PREFIX-NUMBER, to $vm_work/secret; $vm_secret_values keeps every
# value written, for the final check that none reached a log.
vm_secret_values=()
write_secret() {
    local value
    value=$1-$RANDOM$RANDOM$RANDOM
    printf '%s' "$value" > "$vm_work/secret.new"
    mv "$vm_work/secret.new" "$vm_work/secret"
    vm_secret_values+=("$value")
}

# Runs stereos-hostd on the written config and follows its events, appending to the logs.
hostd_run() {
    "$vm_hostd" --config "$vm_work/config.toml" --log stderr >> "$vm_work/hostd.log" 2>&1 &
    vm_hostd_pid=$!
    vm_pids+=("$vm_hostd_pid")
    # The events from here on: a restarted daemon's stream follows the old one's.
    vm_events_from=1
    [ ! -f "$vm_work/events.txt" ] || vm_events_from=$(($(wc -l < "$vm_work/events.txt") + 1))
    wait_until 20 eval 'ctl status vm >/dev/null 2>&1' || fail "stereos-hostd did not start"
    "$vm_ctl" --socket "$vm_work/api.sock" events vm >> "$vm_work/events.txt" 2>&1 &
    vm_events_pid=$!
    vm_pids+=("$vm_events_pid")
    wait_until 10 eval 'vm_new_events | quiet_grep " state "' || fail "no event stream"
}

# Stops stereos-hostd with SIGTERM and starts it again on the same config and state directory,
# the guest running on.
hostd_restart() {
    local signal=${1:-TERM}  # KILL: a crash, with no clean stop to write anything
    kill -"$signal" "$vm_hostd_pid"
    wait_until 20 child_exited "$vm_hostd_pid" || fail "stereos-hostd did not exit on SIG$signal"
    local status=0
    wait "$vm_hostd_pid" || status=$?
    [ "$signal" != TERM ] || [ "$status" = 0 ] ||
        fail "stereos-hostd exited with status $status on SIGTERM"
    # The old stream has ended: its follower has written all it will.
    wait_until 10 child_exited "$vm_events_pid" || fail "stereosctl events outlived the daemon"
    wait "$vm_events_pid" || true
    vm_forget_pid "$vm_hostd_pid"
    vm_forget_pid "$vm_events_pid"
    echo "[$(elapsed)] stereos-hostd stopped (SIG$signal); starting it again"
    echo "--- stereos-hostd restarted" | tee -a "$vm_work/hostd.log" >> "$vm_work/events.txt"
    hostd_run
}

# Sends SIGHUP to stereos-hostd and waits until it has applied the reload; $vm_log_mark is where
# the daemon log stood before, for hostd_log_since_mark. Argument: what changed, for the output.
hostd_reload() {
    vm_log_mark=$(($(wc -l < "$vm_work/hostd.log") + 1))
    kill -HUP "$vm_hostd_pid"
    wait_until 20 eval 'hostd_log_since_mark | quiet_grep -F "reload applied"' ||
        fail "stereos-hostd did not apply the reload ($1) within 20 s"
    echo "[$(elapsed)] reloaded ($1): $(hostd_log_since_mark | grep -o 'reload applied.*')"
}
hostd_log_since_mark() { tail -n "+${vm_log_mark:-1}" "$vm_work/hostd.log"; }

# A reaped child's pid may be reused: the cleanup must not kill it.
vm_forget_pid() {
    local kept=() pid
    for pid in "${vm_pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    vm_pids=("${kept[@]}")
}

# Whether our child PID has exited: it stays a zombie until waited for, so kill -0 cannot tell.
child_exited() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    [ "$(echo "$stat" | cut -d' ' -f3)" = Z ]
}

ctl() { "$vm_ctl" --socket "$vm_work/api.sock" "$@"; }

# The guest's states in order, from the event stream ("... vm state FROM -> TO (reason)").
vm_states() {
    [ -f "$vm_work/events.txt" ] || return 0
    sed -n 's/^[^ ]* vm state \(.* -> \)\{0,1\}\([a-z_]*\).*/\2/p' "$vm_work/events.txt"
}
# The event lines of the daemon started last.
vm_new_events() { tail -n "+${vm_events_from:-1}" "$vm_work/events.txt" 2>/dev/null || true; }
vm_state_now() { vm_states | tail -n 1; }
vm_state_is() { [ "$(vm_state_now)" = "$1" ]; }
vm_states_line() { vm_states | tr '\n' ' ' | sed 's/ $//'; }
# Counts the links made, and provisioning runs the daemon reported done.
link_ups() { grep -c ' vm link up' "$vm_work/events.txt" || true; }
provisions_done() { grep -c ' vm provision done' "$vm_work/events.txt" || true; }

# Waits until the guest daemon in the VM has received the whole provisioning the N-th time,
# as its own log on the console shows.
wait_provisioned_times() {
    local times=$1 seconds=$2
    wait_until "$seconds" serial_count_at_least "request inject_secret name=VM_SECRET" "$times"
}
