# Debian and Ubuntu roots made with debootstrap from the distributions' archives, so that one
# Debian host (as root) can build and install-test the packages of each supported distribution. Sourced by build-deb and
# test-install. Everything downloaded is kept under $NGX_WSGI_CACHE (default /var/cache/ngx-wsgi):
#   DIST-base-N.tar  the debootstrapped minimal root with its apt sources (made once; N is the
#                    version of base_tarball's recipe below: change it with the recipe)
#   apt-DIST/        the .deb files debootstrap and apt fetched (the roots' /var/cache/apt/archives)
#   DIST-build/      the build root: the base plus the build dependencies (kept and updated)
#   DIST-target/     its cargo target directory (incremental rebuilds)
# A fresh machine makes all of them (about two minutes a distribution); later runs reuse them.

NGX_WSGI_CACHE=${NGX_WSGI_CACHE:-/var/cache/ngx-wsgi}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
UBUNTU_MIRROR=${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
UBUNTU_SECURITY_MIRROR=${UBUNTU_SECURITY_MIRROR:-http://security.ubuntu.com/ubuntu}

# The codename for a distribution name or number: Debian 12 (bookworm) and 13 (trixie), Ubuntu
# 22.04 (jammy), 24.04 (noble) and 26.04 (resolute) are supported.
dist_codename() {
    case "$1" in
        bookworm | 12 | debian12) echo bookworm ;;
        trixie | 13 | debian13) echo trixie ;;
        jammy | 22.04 | ubuntu22.04) echo jammy ;;
        noble | 24.04 | ubuntu24.04) echo noble ;;
        resolute | 26.04 | ubuntu26.04) echo resolute ;;
        *) echo "unsupported distribution '$1' (bookworm, trixie, jammy, noble or resolute)" >&2; return 1 ;;
    esac
}

# The suffix of the packages' version for DIST (an upgrade of the distribution upgrades them).
dist_suffix() {
    case "$1" in
        bookworm) echo +deb12 ;;
        trixie) echo +deb13 ;;
        jammy) echo +ubuntu22.04 ;;
        noble) echo +ubuntu24.04 ;;
        resolute) echo +ubuntu26.04 ;;
    esac
}

is_ubuntu() {
    [ "$1" = jammy ] || [ "$1" = noble ] || [ "$1" = resolute ]
}

# The keyring of Ubuntu's archive, which Debian's debootstrap lacks: noble's ubuntu-keyring
# package, held to its hash (its 2018 archive key, F6EC B376 2474 EDA9 D21B 7022 8719 20D1
# 991B C93C, signs jammy's and resolute's archives too), downloaded with wget (debootstrap's own dependency). Cached under the hash, so a
# new pin never reuses an older keyring. Prints the keyring's path. (Called as $(...), where
# errexit is off: each step says why it failed.)
UBUNTU_KEYRING_DEB=ubuntu-keyring_2023.11.28.1_all.deb
UBUNTU_KEYRING_SHA256=36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8
ubuntu_keyring() {
    local dir=$NGX_WSGI_CACHE/ubuntu-keyring-$UBUNTU_KEYRING_SHA256 deb keyring
    deb=$dir/$UBUNTU_KEYRING_DEB
    keyring=$dir/ubuntu-archive-keyring.gpg
    if [ ! -s "$keyring" ]; then
        mkdir -p "$dir" || return 1
        wget -q -O "$deb.part" "$UBUNTU_MIRROR/pool/main/u/ubuntu-keyring/$UBUNTU_KEYRING_DEB" || {
            echo "roots.sh: cannot download $UBUNTU_KEYRING_DEB from $UBUNTU_MIRROR" >&2
            return 1
        }
        echo "$UBUNTU_KEYRING_SHA256  $deb.part" | sha256sum -c --quiet >/dev/null 2>&1 || {
            echo "roots.sh: $UBUNTU_KEYRING_DEB from $UBUNTU_MIRROR does not have the SHA-256 written here" >&2
            rm -f "$deb.part"
            return 1
        }
        mv "$deb.part" "$deb" || return 1
        rm -rf "$dir/x"
        { dpkg-deb -x "$deb" "$dir/x" \
            && cp "$dir/x/usr/share/keyrings/ubuntu-archive-keyring.gpg" "$keyring.new" \
            && mv "$keyring.new" "$keyring"; } || {
            echo "roots.sh: no archive keyring in $deb" >&2
            return 1
        }
        rm -rf "$dir/x"
    fi
    echo "$keyring"
}

# The codename of this machine when it is a supported distribution, else bookworm.
host_codename() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    dist_codename "$codename" 2>/dev/null || echo bookworm
}

need_root_tools() {
    [ "$(id -u)" -eq 0 ] || { echo "$0: run as root (debootstrap and chroot)" >&2; exit 1; }
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
}

# Holds the lock NAME (until this shell exits): two runs never share a root they both change.
hold_lock() {
    mkdir -p "$NGX_WSGI_CACHE"
    local fd
    exec {fd}>"$NGX_WSGI_CACHE/$1.lock"
    flock "$fd"
}

# Prints the path of DIST's base tarball, making it first if needed. (Called as $(...): the lock
# ends with that subshell.)
base_tarball() {
    local dist=$1 tarball=$NGX_WSGI_CACHE/$1-base-2.tar tmp
    hold_lock "$dist-base"
    if [ ! -s "$tarball" ]; then
        mkdir -p "$NGX_WSGI_CACHE/apt-$dist"
        tmp=$NGX_WSGI_CACHE/$dist-bootstrap
        # An interrupted debootstrap leaves its /proc and /sys mounted in the root.
        findmnt -rn -o TARGET | grep "^$tmp/" | sort -r | xargs -r umount -l
        rm -rf "$tmp"
        echo "debootstrap $dist (minbase) into $tmp" >&2
        local mirror=$DEBIAN_MIRROR security=$DEBIAN_SECURITY_MIRROR components=main
        local ubuntu=() keyring
        if is_ubuntu "$dist"; then
            # nginx-dev and libclang-dev are in universe; every Ubuntu release bootstraps with
            # the same script, which an older debootstrap may not have under the new name.
            mirror=$UBUNTU_MIRROR security=$UBUNTU_SECURITY_MIRROR components="main universe"
            keyring=$(ubuntu_keyring) || return 1
            ubuntu=(--keyring="$keyring" --components=main,universe)
        fi
        debootstrap --variant=minbase --include=ca-certificates "${ubuntu[@]}" \
            --cache-dir="$NGX_WSGI_CACHE/apt-$dist" "$dist" "$tmp" "$mirror" \
            ${ubuntu:+/usr/share/debootstrap/scripts/gutsy} > "$NGX_WSGI_CACHE/$dist-debootstrap.log" 2>&1 \
            || { tail -n 20 "$NGX_WSGI_CACHE/$dist-debootstrap.log" >&2; return 1; }
        printf 'deb %s %s %s\ndeb %s %s-updates %s\ndeb %s %s-security %s\n' \
            "$mirror" "$dist" "$components" "$mirror" "$dist" "$components" \
            "$security" "$dist" "$components" > "$tmp/etc/apt/sources.list"
        # Ubuntu 22.04 has no nginx-dev: the build takes nginx's source from the archive
        # (packaging/nginx-source).
        [ "$dist" != jammy ] || sed 's/^deb /deb-src /' "$tmp/etc/apt/sources.list" >> "$tmp/etc/apt/sources.list"
        # Ubuntu's own list of the same sources (deb822), which debootstrap may write.
        rm -f "$tmp/etc/apt/sources.list.d/ubuntu.sources"
        # Installing a server must not start it: there is no init system in the root.
        printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
        chmod 0755 "$tmp/usr/sbin/policy-rc.d"
        # No manual pages, translations or documentation but copyright files: they take most of
        # the time apt spends unpacking (and man-db's index rebuild) and no step uses them.
        printf '%s\n' 'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/locale/*' \
            'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
            > "$tmp/etc/dpkg/dpkg.cfg.d/90ngx-wsgi-nodoc"
        echo 'man-db man-db/auto-update boolean false' | chroot "$tmp" debconf-set-selections
        tar -C "$tmp" -cf "$tarball.new" . && mv "$tarball.new" "$tarball"
        rm -rf "$tmp"
        find "$NGX_WSGI_CACHE" -maxdepth 1 -name "$dist-base*.tar" ! -path "$tarball" -delete
    fi
    echo "$tarball"
}

# Makes DIR a fresh root of DIST from the base tarball.
new_root() {
    local dist=$1 dir=$2 tarball
    tarball=$(base_tarball "$dist")
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -C "$dir" -xf "$tarball"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    # pip inside the root uses the host's index settings (a mirror or CA bundle), if any, and the
    # certificate authorities added to this machine (a proxy's) are trusted there as well.
    [ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$dir/etc/pip.conf"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
        chroot "$dir" update-ca-certificates >/dev/null 2>&1
    fi
}

# in_root ROOT [SRC:DST ...] -- CMD...: runs CMD chrooted in ROOT with a clean environment, /proc,
# a /dev/shm and the given bind mounts (DST is inside ROOT), all in a private mount namespace, so
# nothing stays mounted when CMD ends, however it ends.
in_root() {
    local root=$1 binds=()
    shift
    while [ "$1" != -- ]; do binds+=("$1"); shift; done
    shift
    unshare --mount --propagation private -- bash -euc '
        root=$1 n=$2
        shift 2
        for ((i = 0; i < n; i++)); do
            src=${1%%:*} dst=$root${1#*:}
            shift
            mkdir -p "$dst"
            mount --bind "$src" "$dst"
        done
        mount -t proc proc "$root/proc"
        [ ! -d /dev/pts ] || mount --bind /dev/pts "$root/dev/pts"
        mkdir -p "$root/dev/shm"
        mount -t tmpfs shm "$root/dev/shm"
        exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' in-root "$root" "${#binds[@]}" "${binds[@]}" "$@"
}

# The apt archive cache of DIST as a bind mount for in_root.
apt_cache_bind() {
    mkdir -p "$NGX_WSGI_CACHE/apt-$1/partial"
    echo "$NGX_WSGI_CACHE/apt-$1:/var/cache/apt/archives"
}
