#!/bin/busybox sh
# /init of the L2 guest: the stock Debian kernel that Keel (or QEMU, for --bench) boots inside L1.
# It reports what the kernel found in one marker line and ends the machine (power off, reboot or
# panic, as the case asks; the snapshot case counts first), so the VMM's exit is part of the test. No `set -e`: a failed mount must not stop the marker line.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# keel.l2_* words on the command line: what to do (run.sh's cases set them).
action=poweroff
devices=
token=
for word in $(cat /proc/cmdline); do
  case $word in
    keel.l2_action=*) action=${word#keel.l2_action=} ;;
    keel.l2_devices=*) devices=${word#keel.l2_devices=} ;;
    keel.l2_token=*) token=${word#keel.l2_token=} ;;
  esac
done

# load_modules <dir>: insmod the modules <dir>/load-order lists, in order (run.sh copies them,
# with their dependencies, from this same kernel's package). One already loaded is skipped.
load_modules() {
  [ -s "$1/load-order" ] || return 0
  while read -r module; do
    [ -d "/sys/module/$module" ] && continue
    insmod "$1/$module.ko" || echo "KEEL-L2-ERROR insmod $module failed"
  done < "$1/load-order"
}
# Always: lanes/nested/l2-modules.list. For the device cases: l2-device-modules.list.
load_modules /lib/modules
[ -z "$devices" ] && [ "$action" != migrate ] || load_modules /lib/modules/devices

read -r uptime _ < /proc/uptime
memtotal=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "KEEL-L2 uptime=$uptime nproc=$(nproc) memtotal_kib=$memtotal clocksource=$clocksource"
# Not judged, for diagnosis: which clocksources survived and what the kernel thinks of the TSC.
tsc_flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -e '^constant_tsc$' -e '^nonstop_tsc$' \
  -e '^tsc_known_freq$' -e '^tsc_reliable$' | tr '\n' ',')
clocksources=$(tr ' ' ',' < /sys/devices/system/clocksource/clocksource0/available_clocksource)
echo "KEEL-L2-INFO clocksources=${clocksources%,} tsc_flags=${tsc_flags%,}"

# virtio: which hardware RNG the kernel bound (virtio_rng.0 when the VMM offers virtio-rng), 16
# bytes read from it, and how many virtio MSI-X interrupts arrived meanwhile (6.12 names the chip
# PCI-MSIX, 6.1 PCI-MSI).
rng=$(cat /sys/class/misc/hw_random/rng_current 2> /dev/null)
bytes=$(dd if=/dev/hwrng bs=16 count=1 2> /dev/null | od -An -tx1 | tr -d ' \n')
# Each line has one count per CPU (columns 2 .. 1+nproc): an interrupt may go to any of them.
msix=$(grep -i 'msi.*virtio' /proc/interrupts \
  | awk -v cpus="$(nproc)" '{ for (i = 2; i <= cpus + 1; i++) sum += $i } END { print sum + 0 }')
echo "KEEL-L2-VIRTIO rng=${rng:-none} bytes=${bytes:-none} msix_irqs=$msix"

# shellcheck source=l2-devices.sh # installed as /devices.sh; it uses $token
[ -z "$devices" ] || . /devices.sh

# button: wait for a press of the ACPI power button (L1 presses it through Keel's API when it
# reads KEEL-L2-BUTTON-READY), as systemd-logind or acpid would, then power off. The button
# driver names its input device "Power Button"; one 24-byte input event is a press or release.
if [ "$action" = button ]; then
  event=
  for input in /sys/class/input/input*; do
    [ "$(cat "$input/name" 2> /dev/null)" = "Power Button" ] || continue
    for node in "$input"/event*; do [ -e "$node" ] && event=${node##*/}; done
  done
  if [ -n "$event" ] && [ -c "/dev/input/$event" ]; then
    echo "KEEL-L2-BUTTON-READY device=$event"
    dd if="/dev/input/$event" bs=24 count=1 of=/dev/null 2> /dev/null
    echo "KEEL-L2-BUTTON pressed"
  else
    echo "KEEL-L2-ERROR no power button input device"
  fi
fi

# count: a shell loop counts to 60, one line every 0.1 s, then powers off; L1 snapshots the VM
# while it counts and restores it in a new keel process. migrate: the same loop also appends
# each number to a file on the virtio-blk disk and syncs (the driver sends FLUSH), and pings
# L1 over virtio-net once, while L1 migrates the VM live to another keel process. Either way
# the count must go on from where it was, without a second boot.
if [ "$action" = count ] || [ "$action" = migrate ]; then
  if [ "$action" = migrate ]; then
    mkdir -p /mnt
    tries=0
    while [ ! -e /sys/block/vda ] && [ $tries -lt 100 ]; do sleep 0.1; tries=$(( tries + 1 )); done
    mount -t ext4 /dev/vda /mnt || echo "KEEL-L2-ERROR mount /dev/vda failed"
    for dir in /sys/class/net/*; do [ "${dir##*/}" = lo ] || { net_if=${dir##*/}; break; }; done
    { ip link set "$net_if" up && ip addr add 10.0.2.2/24 dev "$net_if"; } \
      || echo "KEEL-L2-ERROR network set-up failed"
  fi
  i=1
  while [ $i -le 60 ]; do
    if [ "$action" = migrate ]; then
      write=fail
      echo "$i" >> /mnt/count.log && sync && write=ok
      ping=0
      ping -c 1 -W 1 10.0.2.1 > /dev/null 2>&1 && ping=1
      echo "KEEL-L2-COUNT $i write=$write ping=$ping"
    else
      echo "KEEL-L2-COUNT $i"
      sleep 0.1
    fi
    i=$(( i + 1 ))
  done
  [ "$action" != migrate ] || umount /mnt || echo "KEEL-L2-ERROR umount failed"
  action=poweroff
fi

# How to end, from keel.l2_action=: power off (ACPI S5; the VMM should report "guest
# shutdown"; also after the power button), reboot (reboot=k: the i8042 reset line, "guest
# reset"), or panic (panic=-1 reboots at once: "guest reset"). -f: there is no init system to
# tell. KEEL-L2-END tells L1 that the VM should end now.
echo "KEEL-L2-END action=$action"
case $action in
  reboot) reboot -f ;;
  panic) echo c > /proc/sysrq-trigger ;;
  *) poweroff -f ;;
esac
