# shellcheck shell=sh
# shellcheck disable=SC2154 # token is set by l2-init.sh, which sources this file
# Sourced by L2's /init (l2-init.sh) in the device cases (keel.l2_devices=1 on the command
# line). The VMM offers, besides the virtio-rng every case has (l1-init.sh's run_keel):
#   virtio-blk   an empty ext4 file system, serial number "lanedisk"
#   virtio-net   on a TAP device whose L1 side is 10.0.2.1/24
#   virtio-vsock guest CID 3; L1 listens on host port 5000 and connects to guest port 5001
#   virtio-console hvc0, whose output keel writes to a file L1 reads
# Each device is driven by the stock kernel's own driver, and the results go in one line that
# L1 checks against what it saw on its side of each device (l1-init.sh's judge_devices):
#   KEEL-L2-DEVICES transport= blk=ok blk_serial= blk_sha256= net=ok net_if= net_ctrl_vq=
#     ping_rx= vsock_g2h= vsock_h2g= hvc=ok
# A step that fails puts its name in place of "ok". token is keel.l2_token= from the command
# line: L1 chose it, so nothing here can pass by printing constants.

# Waits up to 10 s for a path to appear (drivers bind asynchronously after insmod).
wait_for() {
  tries=0
  while [ ! -e "$1" ] && [ $tries -lt 100 ]; do
    sleep 0.1
    tries=$(( tries + 1 ))
  done
  [ -e "$1" ]
}

# vsock, host to guest: listen first; L1 retries its connection until this listener is up.
timeout 90 vsock --timeout-s 60 listen 5001 > /tmp/h2g 2> /tmp/h2g.err &
h2g_pid=$!

# virtio-blk: mount the ext4 file system, write 1 MiB of random bytes and the token, sync
# (the driver sends FLUSH, Keel calls fdatasync), unmount. L1 mounts the image file afterwards
# and compares the file's SHA-256 and the token.
blk=ok
blk_serial=none
blk_sha256=none
mkdir -p /mnt
if ! wait_for /sys/block/vda; then
  blk=no-vda
elif ! mount -t ext4 /dev/vda /mnt; then
  blk=mount
else
  blk_serial=$(cat /sys/block/vda/serial 2> /dev/null)
  dd if=/dev/urandom of=/mnt/keel-lane.bin bs=64k count=16 2> /dev/null || blk="write"
  echo "$token" > /mnt/keel-lane.token || blk="write"
  sync || blk="sync"
  blk_sha256=$(sha256sum /mnt/keel-lane.bin | cut -d' ' -f1)
  umount /mnt || blk="umount"
fi

# virtio-net: the first interface that is not loopback, 10.0.2.2/24, ping L1 at 10.0.2.1
# (echo requests go out through the tx queue and the TAP; replies come back through rx).
net=ok
net_if=none
ping_rx=0
for dir in /sys/class/net/*; do
  [ "${dir##*/}" = lo ] || { net_if=${dir##*/}; break; }
done
if [ "$net_if" = none ]; then
  net=no-interface
elif ! ip link set "$net_if" up || ! ip addr add 10.0.2.2/24 dev "$net_if"; then
  net=config
else
  # -w: L1 brings its side of the TAP up when Keel has created it, maybe after L2 got here.
  ping_rx=$(ping -c 3 -w 30 10.0.2.1 2> /dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  [ "${ping_rx:-0}" -gt 0 ] || net=ping
fi

# Which transport the disk came through: its sysfs path runs through the PCI function or the
# ACPI-described virtio-mmio platform device.
transport=unknown
case $(readlink -f /sys/block/vda/device 2> /dev/null) in
  */pci0000:*) transport=pci ;;
  */LNRO0005:*) transport=mmio ;;
esac

# Whether the driver negotiated the control queue (feature bit 17, VIRTIO_NET_F_CTRL_VQ): the
# virtio bus shows the negotiated bits as a string of 0s and 1s, bit 0 first. Linux sends its
# receive-mode commands there when the interface comes up.
net_ctrl_vq=$(cut -c18 "/sys/class/net/$net_if/device/features" 2> /dev/null)

# vsock, guest to host: connect to L1's listener on host port 5000, send a line, print the reply.
g2h=$(timeout 60 vsock --retry-s 20 connect 2 5000 "from-l2-$token" 2> /tmp/g2h.err)
[ -n "$g2h" ] || g2h="error:$(head -c 60 /tmp/g2h.err)"
wait $h2g_pid
h2g=$(cat /tmp/h2g)
[ -n "$h2g" ] || h2g="error:$(head -c 60 /tmp/h2g.err)"

# virtio-console: a line with the token on hvc0, which keel writes to L1's file.
hvc=ok
if wait_for /dev/hvc0; then
  echo "from-l2-$token" > /dev/hvc0 || hvc=write
else
  hvc=no-hvc0
fi

# Spaces would split the key=value words.
words() { echo "$1" | tr ' \t' '__'; }
echo "KEEL-L2-DEVICES transport=$transport blk=$blk blk_serial=$(words "${blk_serial:-none}") blk_sha256=$blk_sha256" \
  "net=$net net_if=$net_if net_ctrl_vq=${net_ctrl_vq:-none} ping_rx=${ping_rx:-0} vsock_g2h=$(words "$g2h") vsock_h2g=$(words "$h2g") hvc=$hvc"
