#!/bin/bash
# Runs one `parley bench` scenario inside a small virtual machine on this machine, with the
# server beside it, where the open-file limit is ours to set. Here the container's hard limit
# (20,000) cannot be raised, so 50,000 idle connections can only be held in a kernel of our own.
#
#   bench/vm.sh "idle -k 50000 --conn-concurrency 256"        # TLS=1 for TLS on
#
# The VM gets this machine's cores (emulated: see ACCEL below), 12 GiB (the bench holds ~85 KiB a
# connection),
# no network but loopback, and an initramfs holding busybox and the release binary with the
# libraries it links. Debian's cloud kernel and qemu come from Debian's packages, fetched once
# into $RUN/vm. The bench's JSON line, labelled, is appended to $OUT/parley.jsonl as by run.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PARLEY:-$ROOT/target/release/parley}
RUN=${RUN:-/tmp/bench}
OUT=${OUT:-$RUN/results}
VM=$RUN/vm
ARGS=${1:?usage: bench/vm.sh \"bench-scenario args\" (e.g. \"idle -k 50000\")}
MEMORY=${MEMORY:-12G}
LIMIT=${LIMIT:-1800}
# Transparent huge pages as on the machine the other figures come from: only where a program
# asks. Debian's kernels default to "always"; THP=always measures that.
THP=${THP:-madvise}
LABEL=${LABEL:-vm $ARGS${TLS:+ tls} thp=$THP}
# Emulation runs 15-20 times slower than this machine, so the server's keepalive (a ping after 3 s
# of silence, a drop after 10) is stretched alike; at the default, a bench busy setting up 50,000
# connections answered too late, and 29,000 were dropped.
SERVER_FLAGS=${SERVER_FLAGS:---keepalive 60}

[ -x "$P" ] || { echo "no release build at $P: run cargo build --release first" >&2; exit 1; }
mkdir -p "$VM" "$OUT"

# qemu, a static busybox and cpio, from Debian's packages.
if ! command -v qemu-system-x86_64 cpio >/dev/null || [ ! -x /bin/busybox ]; then
  apt-get update -qq && apt-get install -y -qq qemu-system-x86 busybox-static cpio >/dev/null
fi

# Debian's cloud kernel: only its vmlinuz is needed; serial console, initramfs, TCP and
# devtmpfs are built in, so no modules are loaded.
KERNEL=$(ls "$VM"/root/boot/vmlinuz-* 2>/dev/null | head -1 || true)
if [ -z "$KERNEL" ]; then
  package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/ {print $2; exit}')
  (cd "$VM" && apt-get download -qq "$package" 2>/dev/null && dpkg -x "$package"_*.deb root)
  KERNEL=$(ls "$VM"/root/boot/vmlinuz-* | head -1)
fi

# The initramfs: busybox, parley and what it links, and an init that runs the server and the
# bench, prints the bench's output between markers and powers off.
INITRD=$VM/initrd
rm -rf "$INITRD" && mkdir -p "$INITRD"/{bin,proc,sys,dev,tmp,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$INITRD/bin/"
for tool in sh mount ip seq sleep cat grep kill reboot mkdir; do ln -s busybox "$INITRD/bin/$tool"; done
cp "$P" "$INITRD/bin/parley"
ldd "$P" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib64\// {print $1}' | while read -r lib; do
  cp -L "$lib" "$INITRD$lib"
done
if [ -n "${TLS:-}" ]; then tls=""; else tls="--no-tls"; fi
cat >"$INITRD/init" <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
ip link set lo up
echo $THP > /sys/kernel/mm/transparent_hugepage/enabled
echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range
echo 65535 > /proc/sys/net/core/somaxconn
ulimit -n 1048576
export HOME=/tmp PARLEY_KNOWN_HOSTS=/tmp/known_hosts
cd /tmp
parley server 12400 --host 127.0.0.1 --shared-dir /tmp/shared --data-dir /tmp/data \
  --max-connections 1000000 --disk-reserve 0 $SERVER_FLAGS $tls >/tmp/server.log 2>&1 &
server=\$!
for i in \$(seq 1 100); do grep -q "sharing the folder" /tmp/server.log && break; sleep 0.1; done
echo "== parley-vm: bench begins"
parley bench $ARGS $tls -p 12400 --pid \$server --timeout $LIMIT 2>&1
echo "== parley-vm: bench ended (\$?)"
echo "== parley-vm: server log"; cat /tmp/server.log
kill \$server
reboot -f
EOF
chmod +x "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc --quiet | gzip -1) >"$VM/initrd.gz"

# Software emulation by default: /dev/kvm opens on this machine, but a kernel under it spins in
# the host's kernel and never gets past its first lines (tried: -cpu host, kvm64). Emulation is
# slower by far, which costs setting up time, not the memory each connection holds.
ACCEL=${ACCEL:-tcg,thread=multi}
LOG=$VM/console.log
timeout "$((LIMIT + 120))" qemu-system-x86_64 -accel "$ACCEL" -smp "$(nproc)" -m "$MEMORY" \
  -nographic -no-reboot -kernel "$KERNEL" -initrd "$VM/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=0 panic=-1" >"$LOG" 2>&1 || true
CONSOLE=$(tr -d '\r' <"$LOG")
sed -n '/== parley-vm: bench begins/,/== parley-vm: server log/p' <<<"$CONSOLE"
grep -q "== parley-vm: bench ended (0)" <<<"$CONSOLE" \
  || { echo "the bench did not finish in the VM; its console is in $LOG" >&2; exit 1; }
grep '^{' <<<"$CONSOLE" | tail -1 \
  | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$LABEL" \
  | tee -a "$OUT/parley.jsonl"
