#!/usr/bin/env bash
# Fresh-install check. Proves the README's promise: on a fresh Debian 12 machine with
# Python 3.11 and the Rust toolchain, as root, `make demo` then `make test` work.
#
# It builds a clean Debian bookworm root with debootstrap (kept and reused), runs each
# check in a throwaway overlay on top of it, in a network namespace of its own (so its
# RabbitMQ on 127.0.0.1:5672 never meets the host's), installs only the stated
# prerequisites, clones the committed project (HEAD, not the working tree) into it and
# runs the makes there. Run as root on a Debian/Ubuntu host.
#
#   FRESH_ROOT   work folder (default /var/tmp/serve-fresh-root); logs go to $FRESH_ROOT/../fresh-logs
#   FRESH_REPO   git repository to clone (default: the one this script sits in)
#   FRESH_STEPS  makes to run, in order (default "demo test"); "none" stops after the
#                setup and checks the network, Python and Rust from inside instead
set -euo pipefail

FRESH_ROOT=${FRESH_ROOT:-/var/tmp/serve-fresh-root}
FRESH_STEPS=${FRESH_STEPS:-demo test}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRESH_REPO=${FRESH_REPO:-$(git -C "$HERE" rev-parse --show-toplevel)}
MIRROR=http://deb.debian.org/debian
PREREQS=(python3 python3-venv make git gcc ca-certificates)

BASE=$FRESH_ROOT/base        # debootstrap output, never modified after the marker is written
UPPER=$FRESH_ROOT/upper      # this run's changes; kept after the run for inspection, wiped at the next
OVLWORK=$FRESH_ROOT/ovlwork
R=$FRESH_ROOT/root           # the root the run sees: BASE + UPPER
MARKER=$FRESH_ROOT/.debootstrap-complete

NS=serve-fresh
VETH_HOST=sfresh0
VETH_NS=sfresh1
HOST_IP=10.213.77.1
NS_IP=10.213.77.2
SUBNET=10.213.77.0/30
NFT_TABLE=serve_fresh

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'fresh-check: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root"
mkdir -p "$FRESH_ROOT"
LOGS=$(cd "$FRESH_ROOT/.." && pwd)/fresh-logs
mkdir -p "$LOGS"
exec 9>"$FRESH_ROOT/.lock"
flock -n 9 || die "another fresh check holds $FRESH_ROOT/.lock"

# --- host tools -------------------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
command -v git >/dev/null || missing+=(git)
if ((${#missing[@]})); then
  log "installing host tools: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
[[ -x /root/.cargo/bin/cargo && -d /root/.rustup ]] || die "no Rust toolchain in /root/.cargo and /root/.rustup"

# --- cleanup: everything below is undone on exit ------------------------------------------
MOUNTS=()            # mount points, unmounted in reverse order
OLD_FORWARD=""
cleanup() {
  local rc=$?
  set +e
  # the makes leave daemons behind (RabbitMQ, epmd): every process in the namespace is ours
  if ip netns list 2>/dev/null | grep -qw "$NS"; then
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null)
    if [[ -n $pids ]]; then
      kill $pids 2>/dev/null; sleep 3
      pids=$(ip netns pids "$NS" 2>/dev/null)
      [[ -n $pids ]] && kill -9 $pids 2>/dev/null && sleep 1
    fi
  fi
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}"
  done
  ip link del "$VETH_HOST" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  nft delete table ip "$NFT_TABLE" 2>/dev/null
  [[ -n $OLD_FORWARD ]] && echo "$OLD_FORWARD" >/proc/sys/net/ipv4/ip_forward
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# leftovers of a run that was killed before its trap ran (the lock says none is running)
if [[ -n $(ip netns pids "$NS" 2>/dev/null) ]]; then kill -9 $(ip netns pids "$NS") 2>/dev/null || true; fi
awk -v r="$R" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
ip link del "$VETH_HOST" 2>/dev/null || true
ip netns del "$NS" 2>/dev/null || true
nft delete table ip "$NFT_TABLE" 2>/dev/null || true

# --- 1. the clean root ------------------------------------------------------------------
if [[ -f $MARKER ]]; then
  log "reusing the Debian root in $BASE ($(cat "$MARKER"))"
else
  log "debootstrap bookworm into $BASE"
  rm -rf "$BASE" "$MARKER"
  t0=$(date +%s)
  debootstrap --arch=amd64 bookworm "$BASE" "$MIRROR"
  # the sources a fresh install has
  cat >"$BASE/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -f "$BASE/etc/resolv.conf" "$BASE/etc/hostname" "$BASE"/var/cache/apt/archives/*.deb
  echo "debootstrap took $(($(date +%s) - t0)) s on $(date -u +%F)" >"$MARKER"
  log "$(cat "$MARKER")"
fi

# --- a throwaway layer over it: every run starts from the bare root -----------------------
rm -rf "$UPPER" "$OVLWORK"
mkdir -p "$UPPER" "$OVLWORK" "$R"
mount -t overlay serve-fresh -o "lowerdir=$BASE,upperdir=$UPPER,workdir=$OVLWORK" "$R"
MOUNTS+=("$R")

mount -t proc proc "$R/proc"; MOUNTS+=("$R/proc")
mount -t sysfs sysfs "$R/sys"; MOUNTS+=("$R/sys")
mount --bind /dev "$R/dev"; mount --make-private "$R/dev"; MOUNTS+=("$R/dev")
mount --bind /dev/pts "$R/dev/pts"; MOUNTS+=("$R/dev/pts")
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"; MOUNTS+=("$R/dev/shm")

# --- 2. network namespace, veth pair, NAT -------------------------------------------------
log "network namespace $NS ($NS_IP), NAT through the host"
ip netns add "$NS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
ip link set "$VETH_NS" netns "$NS"
# the veth must not be wider than the way out (some VMs have an MTU under 1500)
egress_dev=$(ip -o route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
mtu=$(cat "/sys/class/net/${egress_dev:-lo}/mtu" 2>/dev/null || echo 1500)
((mtu > 1500)) && mtu=1500
ip link set "$VETH_HOST" mtu "$mtu"
ip addr add "$HOST_IP/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip -n "$NS" link set lo up
ip -n "$NS" link set "$VETH_NS" mtu "$mtu"
ip -n "$NS" addr add "$NS_IP/30" dev "$VETH_NS"
ip -n "$NS" link set "$VETH_NS" up
ip -n "$NS" route add default via "$HOST_IP"
OLD_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
echo 1 >/proc/sys/net/ipv4/ip_forward
# masquerade the namespace's traffic out; drop anything it sends to the host itself
# (the host's own services, its RabbitMQ included, are never reachable from inside)
nft -f - <<EOF
table ip $NFT_TABLE {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $SUBNET oifname != "$VETH_HOST" masquerade
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$VETH_HOST" drop
  }
}
EOF

# The network of this machine kind: a debootstrapped root has no resolver configured
# (a real install gets one from DHCP), and the host's resolv.conf names this VM network's
# own; and HTTPS leaves through a TLS-intercepting proxy whose CA only the host's bundle
# holds (below). Without the resolver nothing inside resolves a name; without the CA no
# HTTPS client (pip, cargo, curl) trusts PyPI or crates.io. With both, the root sees what
# a fresh machine on this network would see. Apt uses plain HTTP and needs the resolver only.
if grep -qE '^nameserver[[:space:]]+(127\.|::1)' /etc/resolv.conf; then
  die "the host's resolver is on loopback (/etc/resolv.conf), unreachable from the namespace"
fi
cp /etc/resolv.conf "$R/etc/resolv.conf"
hn=$(hostname)
cp /etc/hostname "$R/etc/hostname" 2>/dev/null || echo "$hn" >"$R/etc/hostname"
# RabbitMQ names its node after the host name, which must resolve
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$hn" >"$R/etc/hosts"

ENV=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8
     PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
inside() { ip netns exec "$NS" chroot "$R" /usr/bin/env -i "${ENV[@]}" "$@"; }
packages() { inside dpkg-query -W -f '${Package}=${Version}\n' | sort; }

# --- 3. the stated prerequisites, nothing else ---------------------------------------------
log "apt-get install ${PREREQS[*]}"
packages >"$LOGS/packages-bare.txt"
inside apt-get update -q
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PREREQS[@]}"
# The host's CA bundle, merged in: the certificates of /etc/ssl/certs/ca-certificates.crt
# that neither Debian's bundle inside nor the host's own ca-certificates package ships
# (the CAs added on this machine) go to /usr/local/share/ca-certificates, where
# update-ca-certificates keeps them whenever it rebuilds the bundle. Copying the bundle
# over would be undone by the next rebuild, drop the roots Debian added since, and bring
# back the ones it has withdrawn.
awk -v dir="$R/usr/local/share/ca-certificates" '
  /-----BEGIN CERTIFICATE-----/ { inside = 1; body = ""; pem = $0 "\n"; next }
  inside {
    pem = pem $0 "\n"
    if (!/-----END CERTIFICATE-----/) { body = body $0; next }
    inside = 0
    if (FILENAME == ARGV[1]) known[body] = 1
    else if (!(body in known)) { n++; f = sprintf("%s/host-ca-%02d.crt", dir, n); printf "%s", pem > f; close(f) }
  }
  END { print n + 0 }' <(cat "$R/etc/ssl/certs/ca-certificates.crt" /usr/share/ca-certificates/*/*.crt) \
  /etc/ssl/certs/ca-certificates.crt >"$LOGS/host-cas.txt"
HOST_CAS=$(cat "$LOGS/host-cas.txt")
if ((HOST_CAS > 0)); then
  inside update-ca-certificates
  for f in "$R"/usr/local/share/ca-certificates/host-ca-*.crt; do
    inside openssl x509 -noout -subject -in "${f#"$R"}"
  done
fi
inside apt-get clean
packages >"$LOGS/packages-prereqs.txt"

# Rust: the host's toolchains read-only, and a CARGO_HOME of its own with only the
# rustup proxies (no registry cache, no config)
mkdir -p "$R/root/.rustup" "$R/root/.cargo"
mount --bind /root/.rustup "$R/root/.rustup"; MOUNTS+=("$R/root/.rustup")
mount -o remount,bind,ro "$R/root/.rustup"
cp -a /root/.cargo/bin "$R/root/.cargo/bin"

# --- 4. the project: a fresh clone of the committed HEAD ----------------------------------
log "cloning $FRESH_REPO into /root/project"
git clone -q --no-local --no-checkout "$FRESH_REPO" "$R/root/project"
git -C "$R/root/project" fetch -q origin HEAD
git -C "$R/root/project" checkout -q --detach FETCH_HEAD
commit=$(git -C "$R/root/project" rev-parse --short HEAD)

DEBIAN=$(cat "$R/etc/debian_version")

# --- 5. the makes (or the connectivity check) ----------------------------------------------
SUMMARY=()
status=0
if [[ $FRESH_STEPS == none ]]; then
  log "connectivity check inside the namespace"
  inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl  # for the check alone
  checks=(
    "curl -sSI https://pypi.org/simple/ | head -1"
    "curl -sSI https://index.crates.io/config.json | head -1"
    "apt-get update -q"
    "python3 --version"
    "cargo --version"
    "python3 -m venv /tmp/venv && /tmp/venv/bin/pip download -q --no-deps -d /tmp/dl six && ls /tmp/dl"
  )
  : >"$LOGS/connectivity.log"
  for c in "${checks[@]}"; do
    printf '\n$ %s\n' "$c"
    if inside bash -o pipefail -c "$c" 2>&1 | tee -a "$LOGS/connectivity.log"; then
      SUMMARY+=("ok      $c")
    else
      SUMMARY+=("FAILED  $c"); status=1
    fi
  done
else
  for step in $FRESH_STEPS; do
    log "make $step (log: $LOGS/$step.log)"
    packages >"$LOGS/packages-before-$step.txt"
    t0=$(date +%s)
    set +e
    inside env CI=true bash -c "cd /root/project && make $step" 2>&1 | tee "$LOGS/$step.log"
    rc=${PIPESTATUS[0]}
    set -e
    t1=$(date +%s)
    packages >"$LOGS/packages-after-$step.txt"
    added=$(comm -13 "$LOGS/packages-before-$step.txt" "$LOGS/packages-after-$step.txt" | cut -d= -f1 | tr '\n' ' ')
    SUMMARY+=("make $step: exit $rc, $(awk -v s=$((t1 - t0)) 'BEGIN {printf "%.1f", s / 60}') min, apt installed $(wc -w <<<"$added") packages: ${added:-none}")
    if ((rc != 0)); then status=1; break; fi
  done
fi

printf '\n== summary\n'
printf 'project:  %s at %s\n' "$FRESH_REPO" "$commit"
printf 'Debian:   %s inside (%s)\n' "$DEBIAN" "$(cat "$MARKER")"
printf 'CAs:      %s certificates added to the host'"'"'s bundle on this machine, added inside\n' "$HOST_CAS"
printf 'prereqs:  %s packages added to the bare root by apt-get install %s\n' \
  "$(comm -13 "$LOGS/packages-bare.txt" "$LOGS/packages-prereqs.txt" | wc -l)" "${PREREQS[*]}"
printf '%s\n' "${SUMMARY[@]}"
printf 'logs:     %s; the run'"'"'s root stays in %s until the next run\n' "$LOGS" "$UPPER"
exit "$status"
