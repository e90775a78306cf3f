#!/bin/busybox sh
# /init of the L2 guest: the stock Debian kernel that Keel (or QEMU, for --bench) boots inside L1.
# It reports what the kernel found in one marker line and powers the machine off, so the VMM's
# exit is part of the test. No `set -e`: a failed mount must not stop the marker line.
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

# -f: no init system to tell; the kernel powers off (ACPI S5) or, failing that, halts.
poweroff -f
