#!/usr/bin/env bash
# Installs the Debian package into a bare Debian 12 (minbase) root, the way an operator would,
# and checks: what it holds; the dependencies dpkg-shlibdeps computed suffice (both programs
# run, --check-config accepts the installed example); systemd-analyze verify on the installed
# units; the user, group and config directory exist; the socket is enabled, not the service;
# `dpkg -r` removes everything but the conffile; `dpkg -P` removes that and the state too.
#   package_test.sh BUILD_DIR VERSION     (BUILD_DIR holds stereos-hostd_VERSION_ARCH.deb)
# The bare root is cached as a tarball under /var/cache/fresh-machine (STEREOS_BARE_ROOT_TARBALL
# overrides it), and the downloaded packages under BUILD_DIR/package-cache, so a rerun needs no
# download.
set -euo pipefail
build_dir=$(realpath "$1") version=$2
skip=77
skip_because() { echo "SKIP: $*"; exit $skip; }
fail() { echo "FAIL: $*" >&2; exit 1; }

debs=("$build_dir"/stereos-hostd_"$version"_*.deb)
[ -f "${debs[0]}" ] || fail "no stereos-hostd_${version}_*.deb in $build_dir (cpack -G DEB makes it)"
deb=${debs[0]}

[ "$(id -u)" = 0 ] || skip_because "needs root to make and enter a Debian root"
command -v unshare >/dev/null || skip_because "unshare not installed (package util-linux)"

# A machine-wide cache: other tools that make the same bare root may share it.
tarball=${STEREOS_BARE_ROOT_TARBALL:-/var/cache/fresh-machine/bookworm-minbase.tar}
if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || skip_because "no cached Debian 12 root and no debootstrap"
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    boot=$(mktemp -d /var/tmp/stereos-debootstrap.XXXXXX)
    echo "building a bare Debian 12 root with debootstrap from $mirror (once)..."
    if ! debootstrap --variant=minbase bookworm "$boot" "$mirror" >"$boot.log" 2>&1; then
        tail -5 "$boot.log"
        rm -rf "$boot" "$boot.log"
        skip_because "debootstrap could not build a Debian 12 root (no network or mirror?)"
    fi
    mkdir -p "$(dirname "$tarball")"
    tar -C "$boot" -cf "$tarball.part.$$" . && mv "$tarball.part.$$" "$tarball"
    rm -rf "$boot" "$boot.log"
fi

root=$(mktemp -d /var/tmp/stereos-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
tar -C "$root" -xf "$tarball"
chmod 755 "$root"  # the tarball's "./" may be mktemp's 0700; users in the root must traverse /
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cp "$deb" "$root/tmp.deb"
archives=$build_dir/package-cache/apt-archives
mkdir -p "$archives/partial"

# Everything below runs inside the root. Each check prints what it checked.
cat > "$root/check.sh" <<'INSIDE'
set -euo pipefail
# grep -q would exit at the first match, and the writer's SIGPIPE would fail the pipeline.
quiet_grep() { grep "$@" >/dev/null; }
fail() { echo "FAIL: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
pkg=stereos-hostd
apt-get update -qq >/dev/null 2>&1 || { echo "SKIP: apt-get update failed in the root (no network or mirror?)"; exit 77; }
mv /tmp.deb /tmp/$pkg.deb
apt-get install -y -qq --no-install-recommends /tmp/$pkg.deb >/tmp/apt.log 2>&1 ||
    { tail -20 /tmp/apt.log; fail "apt-get install of the package failed"; }
echo "installed: $(dpkg-query -W -f='${Package} ${Version} ${Architecture}; Depends: ${Depends}' $pkg)"

files=$(dpkg -L $pkg)
for f in /usr/bin/stereos-hostd /usr/bin/stereosctl /lib/systemd/system/stereos-hostd.service \
         /lib/systemd/system/stereos-hostd.socket /usr/lib/sysusers.d/stereos-hostd.conf \
         /usr/lib/tmpfiles.d/stereos-hostd.conf /etc/stereos-hostd/config.toml \
         /usr/share/man/man8/stereos-hostd.8 /usr/share/man/man1/stereosctl.1 \
         /usr/share/man/man5/stereos-hostd.toml.5 \
         /usr/share/bash-completion/completions/stereosctl \
         /usr/lib/systemd/catalog/stereos-hostd.catalog \
         /usr/share/doc/stereos-hostd/openapi.json; do
    grep -qx "$f" <<<"$files" || fail "the package does not hold $f"
done
if grep -E '^/usr/include/|\.a$|/cmake/stereos|/pkgconfig/' <<<"$files"; then
    fail "the client library (component dev) is in the daemon's package"
fi
dpkg-query -W -f='${Conffiles}\n' $pkg | quiet_grep '^ /etc/stereos-hostd/config.toml ' ||
    fail "/etc/stereos-hostd/config.toml is not a conffile"
echo "files: $(grep -c . <<<"$files") paths, config.toml a conffile, no client library"
for extra in /usr/share/man/ /usr/share/bash-completion/ /usr/lib/systemd/catalog/ /lib/systemd/catalog/; do
    n=$(grep -c "^$extra." <<<"$files" || true)
    [ "$n" = 0 ] || echo "  $n under $extra"
done

# The journal catalog (required above): postinst must have compiled it in.
catalog=$(grep -E '/systemd/catalog/.+\.catalog$' <<<"$files" | head -1 || true)
if [ -n "$catalog" ]; then
    id=$(sed -n 's/^-- \([0-9a-fA-F]\{32\}\).*/\1/p' "$catalog" | head -1)
    [ -n "$id" ] || fail "$catalog holds no '-- MESSAGE_ID' entry"
    journalctl --list-catalog 2>/dev/null | quiet_grep -i "^$id " ||
        fail "MESSAGE_ID $id of $catalog is not in the journal's catalog after install"
    echo "catalog $catalog compiled in (MESSAGE_ID $id listed)"
fi

stereos-hostd --check-config --config /etc/stereos-hostd/config.toml ||
    fail "stereos-hostd --check-config rejects the installed example"
stereosctl --help >/dev/null || fail "stereosctl does not run"
echo "programs run: --check-config accepts the installed example"

grep -qx 'ExecStart=/usr/bin/stereos-hostd' /lib/systemd/system/stereos-hostd.service ||
    fail "ExecStart does not name /usr/bin/stereos-hostd"
systemd-analyze verify /lib/systemd/system/stereos-hostd.socket /lib/systemd/system/stereos-hostd.service ||
    fail "systemd-analyze verify"
echo "units verified"

getent passwd stereos-hostd >/dev/null || fail "no user stereos-hostd"
getent group stereos >/dev/null || fail "no group stereos"
[ "$(stat -c '%a %U %G' /etc/stereos-hostd)" = "750 root stereos-hostd" ] ||
    fail "/etc/stereos-hostd is $(stat -c '%a %U %G' /etc/stereos-hostd), not 750 root stereos-hostd"
echo "user, group and config directory made"

[ "$(systemctl is-enabled stereos-hostd.socket)" = enabled ] || fail "the socket is not enabled"
[ -L /etc/systemd/system/sockets.target.wants/stereos-hostd.socket ] || fail "no sockets.target.wants link"
[ ! -e /etc/systemd/system/multi-user.target.wants/stereos-hostd.service ] ||
    fail "the service itself was enabled"
echo "socket enabled, service not"

# The operator's edit and the daemon's state, which remove must keep and purge must not.
echo '# edited' >>/etc/stereos-hostd/config.toml
mkdir -p /var/lib/stereos-hostd && echo '{}' >/var/lib/stereos-hostd/guests.json

dpkg -r $pkg >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -r"; }
[ "$(dpkg-query -W -f='${db:Status-Status}' $pkg)" = config-files ] || fail "not config-files after dpkg -r"
while read -r f; do
    [ -d "$f" ] && continue
    [ "$f" = /etc/stereos-hostd/config.toml ] && continue
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "dpkg -r left $f"
done <<<"$files"
grep -q '^# edited' /etc/stereos-hostd/config.toml || fail "dpkg -r lost the edited conffile"
[ -e /var/lib/stereos-hostd/guests.json ] || fail "dpkg -r removed the state"
echo "dpkg -r: every file gone but the edited conffile; state kept"

dpkg -P $pkg >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -P"; }
[ "$(dpkg-query -W -f='${db:Status-Status}' $pkg 2>/dev/null || echo not-installed)" = not-installed ] ||
    fail "still known to dpkg after purge"
for gone in /etc/stereos-hostd /var/lib/stereos-hostd /etc/systemd/system/sockets.target.wants/stereos-hostd.socket \
            /etc/systemd/system/stereos-hostd.socket; do
    [ ! -e "$gone" ] && [ ! -L "$gone" ] || fail "dpkg -P left $gone"
done
echo "dpkg -P: conffile, config directory, state and enablement gone"
INSIDE

status=0
unshare --mount --fork bash -c "
  set -e
  mount --make-rprivate /
  mount --bind /proc '$root/proc' && mount --bind /dev '$root/dev' && mount --bind /dev/pts '$root/dev/pts'
  mount -t tmpfs tmpfs '$root/tmp' && mount -t tmpfs tmpfs '$root/run'
  mount --bind '$archives' '$root/var/cache/apt/archives'
  exec chroot '$root' /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash /check.sh" || status=$?
[ $status = 0 ] && echo "package test passed"
exit $status
