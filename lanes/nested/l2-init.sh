#!/bin/busybox sh
# /init of the L2 guest: the stock Debian kernel that Keel (or QEMU, for --bench) boots inside L1.
# It reports what the kernel found in one marker line and ends the machine (power off, reboot or
# panic, as the case asks), so the VMM's exit is part of the test. No `set -e`: a failed mount must not stop the marker line.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Hook for device tests: modules listed in lanes/nested/l2-modules.list are copied, from this
# same kernel's package, into /lib/modules with their dependencies, and loaded here in order.
if [ -s /lib/modules/load-order ]; then
  while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "KEEL-L2-ERROR insmod $module failed"
  done < /lib/modules/load-order
fi

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
msix=0
for count in $(grep -i 'msi.*virtio' /proc/interrupts | awk '{ print $2 }'); do
  msix=$(( msix + count ))
done
echo "KEEL-L2-VIRTIO rng=${rng:-none} bytes=${bytes:-none} msix_irqs=$msix"

# How to end, from keel.l2_action= on the command line: power off (ACPI S5; the VMM should
# report "guest shutdown"), reboot (reboot=k: the i8042 reset line, "guest reset"), or panic
# (panic=-1 reboots at once: "guest reset"). -f: there is no init system to tell.
action=poweroff
for word in $(cat /proc/cmdline); do
  case $word in keel.l2_action=*) action=${word#keel.l2_action=} ;; esac
done
case $action in
  reboot) reboot -f ;;
  panic) echo c > /proc/sysrq-trigger ;;
  *) poweroff -f ;;
esac
