#!/usr/bin/env bash
# Installs the client library (`cmake --install --component dev`) to a temporary prefix, then:
# builds example/ against it with find_package(stereos CONFIG), which also compiles every
# installed header alone; runs the example against a fake guest (ping, get_health, lifecycle
# pushes); builds and runs a one-file program with `pkg-config --cflags --libs stereos`.
#   embedding_test.sh BUILD_DIR EXAMPLE_DIR CXX FAKEGUEST_BINARY
set -euo pipefail
build_dir=$1 example_dir=$2 cxx=$3 fakeguest=$4
work=$(mktemp -d /tmp/stereos-embedding.XXXXXX)
guest_pid=""
cleanup() {
    [ -z "$guest_pid" ] || kill "$guest_pid" 2>/dev/null || true
    [ -z "$guest_pid" ] || wait "$guest_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
prefix=$work/prefix

cmake --install "$build_dir" --prefix "$prefix" --component dev >/dev/null
find "$prefix" -type f | sed "s|^$prefix/||" | sort
# Nothing of the daemon: the library component only.
[ ! -e "$prefix/bin" ] || fail "--component dev installed programs"

# The installed tree must stand alone: the example sees neither the source nor the build tree.
cmake -S "$example_dir" -B "$work/example" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/configure.log" ||
    { cat "$work/configure.log"; fail "configuring the example against the installed package"; }
grep 'headers compiled alone' "$work/configure.log"
cmake --build "$work/example" -j 2 >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log"; fail "building the example and the headers alone"; }
source_dir=$(realpath "$example_dir/../../..")
if grep -qs -e "$source_dir" -e "$(realpath "$build_dir")" "$work/example/CMakeFiles/guest_client.dir/flags.make"; then
    fail "the example was compiled against the source or build tree"
fi

# A guest that answers and pushes lifecycle events to every connection four times a second.
"$fakeguest" --listen tcp:127.0.0.1:0 --health-state healthy --lifecycle-flood 4 >"$work/guest.out" &
guest_pid=$!
for _ in $(seq 100); do
    grep -q '^listening ' "$work/guest.out" && break
    sleep 0.1
done
endpoint=$(sed -n 's/^listening //p' "$work/guest.out" | head -1)
[ -n "$endpoint" ] || fail "the fake guest did not start"

output=$("$work/example/guest_client" "$endpoint" 3 30) || { echo "$output"; fail "guest_client failed"; }
echo "$output"
grep -qx "connected $endpoint" <<<"$output" || fail "no connected line"
grep -qx "pong" <<<"$output" || fail "no pong"
grep -qx "health healthy agents=0" <<<"$output" || fail "no health reply"
[ "$(grep -c '^lifecycle ' <<<"$output")" -ge 3 ] || fail "fewer than 3 lifecycle pushes printed"

# pkg-config: compile and link one file with nothing but what stereos.pc says.
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name stereos.pc)")
cat >"$work/one_file.cpp" <<'CPP'
#include <iostream>
#include <stereos/protocol/codec.hpp>
#include <stereos/transport/endpoint.hpp>
int main() {
    auto line = stereos::protocol::encode(stereos::protocol::host_message{stereos::protocol::ping_request{}});
    auto target = stereos::transport::parse_endpoint("vsock:3");
    if (!line || !target)
        return 1;
    std::cout << *line << stereos::transport::to_string(*target) << "\n";
}
CPP
flags=$(pkg-config --cflags --libs stereos) || fail "pkg-config does not find stereos.pc"
echo "pkg-config --cflags --libs stereos: $flags"
# shellcheck disable=SC2086 # the flags are words
"$cxx" "$work/one_file.cpp" -o "$work/one_file" $flags || fail "compiling with pkg-config's flags"
[ "$("$work/one_file")" = $'{"type":"ping"}\nvsock:3:1024' ] || fail "the pkg-config program printed: $("$work/one_file")"
echo "embedding test passed"
