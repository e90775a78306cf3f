#!/bin/busybox sh
# /init of L1: a stock Debian kernel under QEMU-TCG with an emulated AMD SVM CPU, which gives it a
# hardware-style /dev/kvm. It loads KVM, boots each L2 case with Keel (and, for --bench, with
# QEMU), and reports on the serial console in marker lines that run.sh parses:
#   KEEL-LANE l1 ...      L1 is up and /dev/kvm is ready (or error=... if not)
#   KEEL-LANE case=...    one line per case: pass/fail and what L2 reported
#   KEEL-BENCH ...        with --bench, per case and round: Keel's and QEMU's time to the L2 marker
#   KEEL-LANE done        every case ran; L1 powers off next
#   L2|<tag>| ...         the L2 serial console, VMM|<tag>| ... the VMM's stderr (for debugging)
# No `set -e`: one failing case must not stop the others. /etc/lane.conf (written by run.sh)
# sets CASES, BENCH_RUNS, MEM_MIB, L2_CMDLINE, L2_IMAGE, CASE_TIMEOUT, SHUTDOWN_GRACE, KEEL_LOG,
# KEEL_ARGS and QEMU_MACHINE.
# As PID 1 this shell would inherit every orphaned process (a watchdog's `sleep` outliving its
# subshell, the device cases' helpers) and get a SIGCHLD when each ends. busybox's `read`
# throws away a partly read line when a signal interrupts it, so run_vmm's console reader lost
# marker lines that arrived in two writes around such a signal (measured: "KEEL-L2 ..." then
# "\r\n" with a SIGCHLD between gave an empty line). The cases therefore run in a child shell,
# and PID 1 only reaps orphans and powers off.
if [ "$$" = 1 ]; then
  /bin/busybox sh "$0"
  /bin/busybox poweroff -f
fi
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
# shellcheck source=/dev/null # written by run.sh
. /etc/lane.conf

CR=$(printf '\r')
# SeaBIOS leaves escape sequences without a newline on the console: start markers on a fresh line.
echo

# NOW = /proc/uptime in centiseconds, without forking (this runs under TCG, where forks are slow).
# The fraction always has two digits; "1$frac - 100" keeps a leading zero from meaning octal.
now() {
  read -r up _ < /proc/uptime
  NOW=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}
seconds() { printf '%d.%02d' $(( $1 / 100 )) $(( $1 % 100 )); }

finish() {
  [ -z "$dmesg_seen" ] || dmesg | tail -n +$(( dmesg_seen + 1 )) | sed 's/^/L1| /'
  now
  echo "KEEL-LANE done uptime_s=$(seconds $NOW)"
  poweroff -f
}

# --- KVM ---------------------------------------------------------------------------------------
# Modules come in dependency order (irqbypass, kvm, kvm_amd). nested=1 lets a guest use SVM
# itself (not needed by L2, but it is the hardware default); npt=1 uses nested paging, which
# QEMU-TCG emulates, so L2 memory faults do not all go through L1's shadow page tables.
while read -r module; do
  case $module in
    kvm_amd) params="nested=1 npt=1" ;;
    *) params= ;;
  esac
  # shellcheck disable=SC2086 # params is a list of words
  insmod "/lib/modules/$module.ko" $params || echo "L1| insmod $module failed"
done < /lib/modules/load-order
now
if [ ! -c /dev/kvm ]; then
  svm=$(grep -c -w svm /proc/cpuinfo)
  echo "KEEL-LANE l1 kernel=$(uname -r) error=no-kvm cpus_with_svm=$svm"
  dmesg | grep -i -e kvm -e svm | sed 's/^/L1| /'
  finish
fi
l1_clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "KEEL-LANE l1 kernel=$(uname -r) cpus=$(nproc) kvm_ready_s=$(seconds $NOW)" \
  "clocksource=$l1_clocksource"
# KVM's messages, and L1's view of its TSC (KVM matches L2 vCPU TSCs only on a stable host TSC).
dmesg | grep -i -e kvm -e tsc | sed 's/^/L1| /'
# From here on L1's kernel messages (e.g. "Unhandled WRMSR" from KVM) would land in the middle
# of marker lines on the shared console: keep them in the log buffer and print them at the end.
dmesg_seen=$(dmesg | wc -l)
dmesg -n 1

# --- Running one VMM ---------------------------------------------------------------------------
# run_vmm <tag> <command>...: runs a VMM whose stdout is the L2 serial console, echoes the console
# prefixed with "L2|<tag>| " and sets:
#   STATUS  the VMM's exit status (137 when it was killed)
#   BOOT_CS centiseconds from starting the VMM to the KEEL-L2 line ("" if none)
#   MARKER  the KEEL-L2 line's fields ("" if none)
#   L2_ERRORS  1 if L2 reported a KEEL-L2-ERROR line (e.g. a module failed to load)
#   VIRTIO, DEVICES  the fields of the KEEL-L2-VIRTIO and KEEL-L2-DEVICES lines
#   KILLED  why the VMM was killed: "timeout", "no-exit-after-poweroff" or ""
#   COUNT_FIRST, COUNT_LAST  the first and last KEEL-L2-COUNT numbers (snapshot, migrate)
#   COUNT_CS  centiseconds from starting the VMM to the first KEEL-L2-COUNT line
#   PINGS_OK_LAST  ping=1 among the last 10 KEEL-L2-COUNT lines (migrate); WRITES_FAILED
# With SNAPSHOT_AT=n (MIGRATE_AT=n) set, the line "KEEL-L2-COUNT n" starts snapshot_vm
# (migrate_vm) in the background.
# The VMM's stderr is echoed afterwards, prefixed with "VMM|<tag>| ", and left in /tmp/stderr.
# Two watchdogs kill it: one after CASE_TIMEOUT, and one SHUTDOWN_GRACE seconds after the
# KEEL-L2-END line (L2 powers off, reboots or panics right after it), so a VM that does not end
# costs little time.
run_vmm() {
  tag=$1
  shift
  rm -f /tmp/console /tmp/stderr /tmp/killed
  mkfifo /tmp/console
  MARKER=
  BOOT_CS=
  L2_ERRORS=
  VIRTIO=
  DEVICES=
  BUTTON=
  COUNT_FIRST=
  COUNT_LAST=
  COUNT_CS=
  PINGS=
  WRITES_FAILED=0
  now
  start=$NOW
  "$@" > /tmp/console 2> /tmp/stderr < /dev/null &
  pid=$!
  (sleep "$CASE_TIMEOUT"; echo timeout > /tmp/killed; kill -KILL $pid) 2> /dev/null &
  watchdog=$!
  grace=
  while IFS= read -r line; do
    line=${line%"$CR"}
    echo "L2|$tag| $line"
    case $line in
      *"KEEL-L2-ERROR"*) L2_ERRORS=1 ;;
      *"KEEL-L2-VIRTIO "*) VIRTIO=${line#*KEEL-L2-VIRTIO } ;;
      *"KEEL-L2-DEVICES "*) DEVICES=${line#*KEEL-L2-DEVICES } ;;
      *"KEEL-L2-BUTTON-READY"*)
        # The case's API socket: press the power button as a manager would (a grandchild, so
        # its exit cannot interrupt this reader; see the top of this file).
        ( /bin/keel remote --api-socket /tmp/keel-api.sock power-button > /tmp/button.out 2>&1 \
            && echo pressed >> /tmp/button.out & )
        ;;
      *"KEEL-L2-BUTTON pressed"*) BUTTON=pressed ;;
      *"KEEL-L2-COUNT "*)
        n=${line##*KEEL-L2-COUNT }
        n=${n%% *}
        case $line in *" ping=1"*) PINGS="${PINGS}1" ;; *" ping=0"*) PINGS="${PINGS}0" ;; esac
        case $line in *" write=fail"*) WRITES_FAILED=$(( WRITES_FAILED + 1 )) ;; esac
        case $n in
          ''|*[!0-9]*) ;;
          *)
            if [ -z "$COUNT_FIRST" ]; then
              COUNT_FIRST=$n
              now
              COUNT_CS=$(( NOW - start ))
            fi
            COUNT_LAST=$n
            # A grandchild, as for the button.
            [ "$n" != "${SNAPSHOT_AT:-}" ] || ( snapshot_vm > /tmp/snap.out 2>&1 & )
            [ "$n" != "${MIGRATE_AT:-}" ] || ( migrate_vm > /tmp/migrate.out 2>&1 & )
            ;;
        esac
        ;;
      *"KEEL-L2-END"*)
        if [ -z "$grace" ]; then
          (sleep "$SHUTDOWN_GRACE"; echo no-exit-after-poweroff > /tmp/killed; kill -KILL $pid) 2> /dev/null &
          grace=$!
        fi
        ;;
      *"KEEL-L2 "*)
        if [ -z "$MARKER" ]; then
          now
          BOOT_CS=$(( NOW - start ))
          MARKER=${line#*KEEL-L2 }
        fi
        ;;
    esac
  done < /tmp/console
  wait $pid
  STATUS=$?
  # Reaped here, so their SIGCHLD cannot interrupt the next case's console reader.
  kill $watchdog $grace 2> /dev/null
  wait $watchdog $grace 2> /dev/null
  KILLED=$(cat /tmp/killed 2> /dev/null)
  while IFS= read -r line; do echo "VMM|$tag| $line"; done < /tmp/stderr
}

# snapshot_vm: what a manager does to save a running VM through keel's API: pause, snapshot to
# /tmp/snap, end the keel process. Prints snapshot_cs= (pause plus snapshot) and "ok" last.
snapshot_vm() {
  api="/bin/keel remote --api-socket /tmp/keel-api.sock"
  now
  t0=$NOW
  $api pause && $api snapshot /tmp/snap || return 1
  now
  echo "snapshot_cs=$(( NOW - t0 ))"
  $api shutdown-vmm && echo ok
}

# migrate_vm: what a manager does to move a running VM to another keel on the same host. The
# destination's config is the source's (from `keel remote info`) with its own TAP, keel1: the
# source still holds keel0 until the switch-over. Then receive-migration at the destination and
# send-migration at the source, which ends once the VM runs at the destination. Prints "ok".
migrate_vm() {
  /bin/keel remote --api-socket /tmp/keel-api.sock info \
    | awk '/^  "config": \{/ { on = 1; print "{"; next } on && /^  \}/ { print "}"; exit } on' \
    | sed 's/"tap": "keel0"/"tap": "keel1"/' > /tmp/dst.json
  grep -q '"tap": "keel1"' /tmp/dst.json || { echo "no config with keel1"; return 1; }
  /bin/keel remote --api-socket /tmp/dst.sock receive-migration unix:/tmp/mig.sock \
    --config /tmp/dst.json || return 1
  /bin/keel remote --api-socket /tmp/keel-api.sock send-migration unix:/tmp/mig.sock && echo ok
}

# field <name> <fields>: the value of name=value in a space-separated list, or "-".
field() {
  for pair in $2; do
    case $pair in "$1="*) echo "${pair#*=}"; return ;; esac
  done
  echo -
}

# --- Cases -------------------------------------------------------------------------------------
# A case is <kernel>:<vcpus>[:<action>], e.g. 6.12:2 or 6.12:1:panic: boot /l2/<kernel>/$L2_IMAGE
# (the bzImage "vmlinuz" or the ELF "vmlinux") with its initramfs; L2 then powers off (the
# default), reboots or panics. "devices" and "devices-mmio" also give L2 a virtio-blk disk, a
# virtio-net card and a virtio-vsock device (over virtio-pci or virtio-mmio), which L2 drives
# (l2-devices.sh) and L1 checks from the host side (judge_devices), then power off.
# It passes when L2 printed its marker with the right CPU count, about MEM of memory and the
# kvm-clock clocksource, and Keel then exited 0 with the exit reason the action implies
# ("guest shutdown" for poweroff, "guest reset" for reboot and for a panic with panic=-1).
min_memtotal_kib=$(( MEM_MIB * 1024 * 78 / 100 ))   # the kernel keeps ~10-20% for itself

# run_keel <tag> <kernel> <vcpus> [action]: one boot under Keel (results as set by run_vmm).
run_keel() {
  l2_args="keel.l2_action=${4:-poweroff}"
  device_args=
  level=$KEEL_LOG
  case ${4:-} in
    migrate)
      # The source: a disk and a NIC (a fixed MAC, which the destination's config keeps), an
      # API socket for migrate_vm; info logs carry the migration's report.
      rm -f /tmp/keel-api.sock /tmp/mig.sock /tmp/migrate.out
      l2_args="keel.l2_action=migrate"
      device_args="--disk path=/tmp/disk.img,id=lanedisk --net tap=keel0,mac=52:54:00:4b:45:4c"
      device_args="$device_args --api-socket /tmp/keel-api.sock"
      case $KEEL_LOG in error|warn) level=info ;; esac
      ;;
    devices*)
      l2_args="keel.l2_action=poweroff keel.l2_devices=1 keel.l2_token=$TOKEN"
      device_args="--disk path=/tmp/disk.img,id=lanedisk --net tap=keel0 --vsock cid=3,socket=/tmp/vsock.sock"
      device_args="$device_args --console file=/tmp/hvc.out"
      [ "$4" != devices-mmio ] || device_args="$device_args --transport mmio"
      ;;
    snapshot)
      # L2 counts; run_vmm snapshots it through this API socket (snapshot_vm).
      rm -rf /tmp/keel-api.sock /tmp/snap /tmp/snap.out
      l2_args="keel.l2_action=count"
      device_args="--api-socket /tmp/keel-api.sock"
      ;;
    button)
      # run_vmm presses the power button through this API socket when L2 is ready.
      rm -f /tmp/keel-api.sock /tmp/button.out
      device_args="--api-socket /tmp/keel-api.sock"
      ;;
  esac
  # shellcheck disable=SC2086 # KEEL_ARGS and device_args are lists of words
  run_vmm "$1" /bin/keel --log-level "$level" --kernel "/l2/$2/$L2_IMAGE" \
    --initrd "/l2/$2/initrd.cpio.gz" --cpus "boot=$3" --memory "size=${MEM_MIB}M" \
    --cmdline "$L2_CMDLINE $l2_args" $KEEL_ARGS $device_args
}

# run_qemu <tag> <kernel> <vcpus>: the same guest under QEMU with KVM, as the reference.
run_qemu() {
  run_vmm "$1" /qemu/bin/qemu-system-x86_64 -L /qemu/share -M "$QEMU_MACHINE" \
    -accel kvm -cpu host -smp "$3" -m "${MEM_MIB}M" -nodefaults -no-user-config \
    -display none -serial stdio -monitor none -no-reboot \
    -kernel "/l2/$2/$L2_IMAGE" -initrd "/l2/$2/initrd.cpio.gz" -append "$L2_CMDLINE"
}

# prepare_devices: the host side of a device case, before Keel starts. A fresh copy of the empty
# ext4 image; a token L2 must write to the disk and send over vsock; the vsock peers; and the L1
# end of the TAP, addressed once Keel has created it. The helpers are started as grandchildren
# (`( ... & )`), so that they belong to PID 1 and their exits cannot interrupt run_vmm's reader.
prepare_devices() {
  cp /l2/disk.ext4 /tmp/disk.img
  TOKEN=$(tr -d '-' < /proc/sys/kernel/random/uuid)
  rm -f /tmp/vsock.sock /tmp/vsock.sock_5000 /tmp/g2h.out /tmp/h2g.out /tmp/tap.out /tmp/hvc.out
  # Guest to host: L2 connects to host port 5000, i.e. this Unix socket.
  ( vsock --timeout-s 60 host-listen /tmp/vsock.sock_5000 > /tmp/g2h.out 2>&1 & )
  # Host to guest: CONNECT 5001 through Keel's socket, retried until L2 listens.
  ( vsock --retry-s 100 --timeout-s 30 host-connect /tmp/vsock.sock 5001 "from-l1-$TOKEN" \
      > /tmp/h2g.out 2>&1 & )
  ( (i=0
     while [ ! -e /sys/class/net/keel0 ] && [ $i -lt 600 ]; do sleep 0.2; i=$(( i + 1 )); done
     ip addr add 10.0.2.1/24 dev keel0 && ip link set keel0 up && echo up) > /tmp/tap.out 2>&1 & )
}

# judge_devices <action>: what L2 reported against what L1 sees on its side of each device. Appends to
# $reasons and sets DEVICE_FIELDS for the case line.
judge_devices() {
  d_blk=$(field blk "$DEVICES")
  d_sha=$(field blk_sha256 "$DEVICES")
  d_ping=$(field ping_rx "$DEVICES")
  [ -n "$DEVICES" ] || reasons="$reasons,no-devices-line"
  want_transport=pci
  [ "$1" != devices-mmio ] || want_transport=mmio
  [ "$(field transport "$DEVICES")" = "$want_transport" ] || reasons="$reasons,transport"
  # Disk: mount the image L2 wrote through virtio-blk and read its files back.
  host_sha=none
  host_token=none
  mkdir -p /mnt
  if mount -t ext4 -o ro,loop /tmp/disk.img /mnt; then
    host_sha=$(sha256sum /mnt/keel-lane.bin 2> /dev/null | cut -d' ' -f1)
    host_token=$(cat /mnt/keel-lane.token 2> /dev/null)
    umount /mnt
  fi
  [ "$d_blk" = ok ] || reasons="$reasons,blk-$d_blk"
  [ "$(field blk_serial "$DEVICES")" = lanedisk ] || reasons="$reasons,blk-serial"
  [ -n "$host_sha" ] && [ "$host_sha" = "$d_sha" ] || reasons="$reasons,blk-readback"
  [ "$host_token" = "$TOKEN" ] || reasons="$reasons,blk-token"
  # Network: L2 pinged L1's end of the TAP (3 echo requests out, replies back).
  [ "$(field net "$DEVICES")" = ok ] || reasons="$reasons,net-$(field net "$DEVICES")"
  [ "$(cat /tmp/tap.out 2> /dev/null)" = up ] || reasons="$reasons,tap-setup"
  [ "$(field net_ctrl_vq "$DEVICES")" = 1 ] || reasons="$reasons,net-ctrl-vq"
  # vsock both ways: each side must have received the other's line with the token.
  [ "$(cat /tmp/g2h.out 2> /dev/null)" = "from-l2-$TOKEN" ] || reasons="$reasons,vsock-g2h-host"
  [ "$(field vsock_g2h "$DEVICES")" = "echo_from-l2-$TOKEN" ] || reasons="$reasons,vsock-g2h-guest"
  [ "$(field vsock_h2g "$DEVICES")" = "from-l1-$TOKEN" ] || reasons="$reasons,vsock-h2g-guest"
  [ "$(cat /tmp/h2g.out 2> /dev/null)" = "echo from-l1-$TOKEN" ] || reasons="$reasons,vsock-h2g-host"
  # virtio-console: L2's line on hvc0 is in the file keel wrote its output to.
  [ "$(field hvc "$DEVICES")" = ok ] || reasons="$reasons,hvc-$(field hvc "$DEVICES")"
  grep -q "from-l2-$TOKEN" /tmp/hvc.out 2> /dev/null || reasons="$reasons,hvc-host"
  DEVICE_FIELDS=" transport=$(field transport "$DEVICES") blk=$d_blk readback=$([ "$host_sha" = "$d_sha" ] && echo ok || echo bad)"
  DEVICE_FIELDS="$DEVICE_FIELDS ping_rx=$d_ping vsock=$(field vsock_h2g "$DEVICES" | cut -c1-8) hvc=$(field hvc "$DEVICES")"
}

# judge <case> <vcpus> <action>: sets JUDGED (the case's KEEL-LANE line, from run_vmm's results)
# and JUDGED_STATUS (pass or fail).
judge() {
  case $3 in
    reboot|panic) expected_exit="guest reset" ;;
    *) expected_exit="guest shutdown" ;;
  esac
  now
  wall_cs=$(( NOW - start ))
  nproc=$(field nproc "$MARKER")
  memtotal=$(field memtotal_kib "$MARKER")
  clocksource=$(field clocksource "$MARKER")
  # Keel's last words, e.g. "keel: VM exited: guest shutdown" -> guest-shutdown.
  vm_exit=$(sed -n 's/^keel: VM exited: //p' /tmp/stderr | tr ' ' '-')
  reasons=
  [ -n "$MARKER" ] || reasons="$reasons,no-marker"
  [ -z "$MARKER" ] || [ "$nproc" = "$2" ] || reasons="$reasons,nproc"
  [ -z "$MARKER" ] || [ "$memtotal" -gt "$min_memtotal_kib" ] 2> /dev/null || reasons="$reasons,memtotal"
  [ -z "$MARKER" ] || [ "$clocksource" = kvm-clock ] || reasons="$reasons,clocksource"
  [ -z "$L2_ERRORS" ] || reasons="$reasons,l2-error"
  # Keel offers a virtio-rng (virtio-pci unless the case says mmio): the stock kernel must bind
  # it and read entropy from it; over PCI it must take MSI-X interrupts doing so.
  [ -z "$MARKER" ] || [ "$(field rng "$VIRTIO")" = virtio_rng.0 ] || reasons="$reasons,virtio-rng"
  [ -z "$MARKER" ] || [ "$3" = devices-mmio ] || [ "$(field msix_irqs "$VIRTIO")" -gt 0 ] 2> /dev/null \
    || reasons="$reasons,msix"
  DEVICE_FIELDS=
  case $3 in
    devices*) judge_devices "$3" ;;
    snapshot | migrate) judge_continued "$3" ;;
  esac
  # button: Keel's API pressed the ACPI power button and L2's button driver saw the press.
  if [ "$3" = button ]; then
    [ "$BUTTON" = pressed ] || reasons="$reasons,button-not-seen"
    grep -q pressed /tmp/button.out 2> /dev/null || reasons="$reasons,button-api"
    DEVICE_FIELDS=" button=${BUTTON:-none}"
  fi
  [ -z "$KILLED" ] || reasons="$reasons,$KILLED"
  [ -n "$KILLED" ] || [ "$STATUS" = 0 ] || reasons="$reasons,exit-status"
  [ -n "$KILLED" ] || grep -q "VM exited: $expected_exit" /tmp/stderr \
    || reasons="$reasons,not-$(echo "$expected_exit" | tr ' ' '-')-exit"
  JUDGED_STATUS=pass
  [ -z "$reasons" ] || JUDGED_STATUS=fail
  JUDGED="KEEL-LANE case=$1 status=$JUDGED_STATUS exit=$STATUS boot_s=$(seconds_or_dash "$BOOT_CS")"
  JUDGED="$JUDGED nproc=$nproc memtotal_kib=$memtotal clocksource=$clocksource"
  JUDGED="$JUDGED uptime_s=$(field uptime "$MARKER") wall_s=$(seconds $wall_cs)"
  JUDGED="$JUDGED vm_exit=${vm_exit:--} virtio_rng=$(field rng "$VIRTIO")"
  JUDGED="$JUDGED msix_irqs=$(field msix_irqs "$VIRTIO")$DEVICE_FIELDS reason=${reasons#,}"
}
seconds_or_dash() { if [ -n "$1" ]; then seconds "$1"; else echo -; fi; }

# follow_destination: stands in for the destination keel in run_vmm (which reads one process's
# console): waits for the destination started by run_migrate to end, then prints its console and
# stderr and exits with its status.
follow_destination() {
  while [ ! -e /tmp/dst.status ]; do sleep 0.2; done
  cat /tmp/dst.console
  cat /tmp/dst.stderr >&2
  exit "$(cat /tmp/dst.status)"
}

# continue_in <tag> <command>...: the second process of a snapshot or migrate case. Keeps the
# first one's results (FIRST_STATUS, FIRST_KILLED, FIRST_LAST: its last count; its boot
# marker and timing, which judge reads), runs the second with run_vmm, and sets SECOND_MARKER
# (a boot marker there means L2 booted again).
continue_in() {
  FIRST_STATUS=$STATUS FIRST_KILLED=$KILLED FIRST_LAST=$COUNT_LAST
  first_marker=$MARKER first_virtio=$VIRTIO first_boot_cs=$BOOT_CS first_start=$start
  run_vmm "$@"
  SECOND_MARKER=$MARKER
  MARKER=$first_marker VIRTIO=$first_virtio BOOT_CS=$first_boot_cs start=$first_start
}

# judge_continued <snapshot|migrate>: called by judge. Appends to $reasons and sets
# DEVICE_FIELDS for the case line:
#   snapshot-api / migrate-api  pause, snapshot and shutdown-vmm, or receive- and
#                               send-migration failed (/tmp/snap.out, /tmp/migrate.out)
#   first-keel-exit / source-exit  the first keel did not end with status 0
#   count-continuity  the second keel's first count is not the next one (+1, or +2 when the
#                     pause or the switch-over cut a line in two)
#   count-end         L2 did not count to 60 in the second keel
#   booted-again      the second keel's console shows a boot marker
# and for migrate:
#   disk-lost-write   the image, mounted in L1 afterwards, does not hold 1..60 in order
#   write-failed      L2 reported a failed write or sync
#   ping-not-resumed  fewer than 8 of the last 10 pings at the destination were answered
judge_continued() {
  if [ "$1" = snapshot ]; then
    api=/tmp/snap.out api_reason=snapshot-api first_reason=first-keel-exit
  else
    api=/tmp/migrate.out api_reason=migrate-api first_reason=source-exit
  fi
  tail -n 1 "$api" 2> /dev/null | grep -qx ok || reasons="$reasons,$api_reason"
  [ "$FIRST_STATUS" = 0 ] && [ -z "$FIRST_KILLED" ] || reasons="$reasons,$first_reason"
  [ -n "$FIRST_LAST" ] && [ -n "$COUNT_FIRST" ] \
    && [ "$COUNT_FIRST" -gt "$FIRST_LAST" ] && [ "$COUNT_FIRST" -le $(( FIRST_LAST + 2 )) ] \
    || reasons="$reasons,count-continuity"
  [ "$COUNT_LAST" = 60 ] || reasons="$reasons,count-end"
  [ -z "$SECOND_MARKER" ] || reasons="$reasons,booted-again"
  DEVICE_FIELDS=" $1_at=${FIRST_LAST:--} resumed_at=${COUNT_FIRST:--} counted_to=${COUNT_LAST:--}"
  if [ "$1" = snapshot ]; then
    snap_cs=$(sed -n 's/^snapshot_cs=//p' /tmp/snap.out 2> /dev/null)
    DEVICE_FIELDS="$DEVICE_FIELDS snapshot_s=$(seconds_or_dash "$snap_cs")"
    DEVICE_FIELDS="$DEVICE_FIELDS restore_to_count_s=$(seconds_or_dash "$COUNT_CS")"
    return
  fi
  mkdir -p /mnt
  written=none
  if mount -t ext4 -o ro,loop /tmp/disk.img /mnt; then
    written=$(tr '\n' ' ' < /mnt/count.log 2> /dev/null)
    umount /mnt
  fi
  [ "$written" = "$(seq 1 60 | tr '\n' ' ')" ] || reasons="$reasons,disk-lost-write"
  [ "$WRITES_FAILED" = 0 ] || reasons="$reasons,write-failed"
  last_pings=$(echo "$PINGS" | tail -c 11 | tr -d '0\n')
  [ ${#last_pings} -ge 8 ] || reasons="$reasons,ping-not-resumed"
  DEVICE_FIELDS="$DEVICE_FIELDS pings=$PINGS tap=$(tr '\n' ',' < /tmp/tap.out)"
  DEVICE_FIELDS="$DEVICE_FIELDS report=$(echo "${REPORT:-none}" | tr ' ,' '_;')"
}

# run_migrate <case> <kernel> <vcpus>: a destination keel waits on its API socket; the source
# boots L2 (disk, NIC), and at count 5 migrate_vm moves it live to the destination while L2 goes
# on writing to its disk and pinging L1 (whose side of the NIC moves from keel0 to keel1 when
# the source has gone). Judged like a power-off case on the source's boot marker and the
# destination's exit, plus judge_continued's checks.
run_migrate() {
  cp /l2/disk.ext4 /tmp/disk.img
  rm -f /tmp/dst.sock /tmp/dst.status /tmp/dst.console /tmp/dst.stderr /tmp/tap.out
  ( (/bin/keel --log-level "$KEEL_LOG" --api-socket /tmp/dst.sock > /tmp/dst.console \
       2> /tmp/dst.stderr < /dev/null &
     echo $! > /tmp/dst.pid
     wait $!
     echo $? > /tmp/dst.status) & )
  # L1's side of the NIC: keel0 while the source runs, then keel1 once the source is gone, with
  # keel0's MAC address: to L2 the network must look the same after the move, as when both TAPs
  # are ports of one bridge (L2's ARP entry for 10.0.2.1 names that MAC).
  ( (i=0
     while [ ! -e /sys/class/net/keel0 ] && [ $i -lt 600 ]; do sleep 0.2; i=$(( i + 1 )); done
     mac=$(cat /sys/class/net/keel0/address)
     ip addr add 10.0.2.1/24 dev keel0 && ip link set keel0 up && echo keel0
     i=0
     while { [ -e /sys/class/net/keel0 ] || [ ! -e /sys/class/net/keel1 ]; } && [ $i -lt 900 ]; do
       sleep 0.2
       i=$(( i + 1 ))
     done
     ip link set keel1 address "$mac" && ip addr add 10.0.2.1/24 dev keel1 \
       && ip link set keel1 up && echo keel1) > /tmp/tap.out 2>&1 & )
  i=0
  while [ ! -S /tmp/dst.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$(( i + 1 )); done
  MIGRATE_AT=5
  run_keel "$1" "$2" "$3" migrate
  MIGRATE_AT=
  REPORT=$(sed -n 's/.*migrated out: //p' /tmp/stderr)
  continue_in "$1+destination" follow_destination
  [ -z "$KILLED" ] || kill -KILL "$(cat /tmp/dst.pid 2> /dev/null)" 2> /dev/null
  judge "$1" "$3" migrate
}

# run_snapshot <case> <kernel> <vcpus>: boots L2 counting, snapshots it at count 5 and ends that
# keel (snapshot_vm), then restores the snapshot in a new keel process, where L2 must count on
# to 60 without booting again and power off. Judged like a power-off case on the first boot's
# marker and the second keel's exit, plus judge_continued's checks.
run_snapshot() {
  SNAPSHOT_AT=5
  run_keel "$1" "$2" "$3" snapshot
  SNAPSHOT_AT=
  continue_in "$1+restored" /bin/keel --log-level "$KEEL_LOG" --restore /tmp/snap
  judge "$1" "$3" snapshot
}

for case in $CASES; do
  kernel=${case%%:*}
  rest=${case#*:}
  vcpus=${rest%%:*}
  action=poweroff
  [ "$rest" = "$vcpus" ] || action=${rest#*:}
  case $action in devices*) prepare_devices ;; esac
  if [ "$action" = snapshot ]; then
    run_snapshot "$case" "$kernel" "$vcpus"
  elif [ "$action" = migrate ]; then
    run_migrate "$case" "$kernel" "$vcpus"
  else
    run_keel "$case" "$kernel" "$vcpus" "$action"
    judge "$case" "$vcpus" "$action"
  fi
  echo "$JUDGED"
  # Bench rounds only for the plain power-off cases.
  [ "$action" = poweroff ] || continue

  # --bench: BENCH_RUNS rounds of QEMU then Keel (the first round reuses the boot above), one
  # KEEL-BENCH line each; time runs from starting the VMM to the L2 marker line.
  round=1
  while [ "$round" -le "$BENCH_RUNS" ]; do
    if [ "$round" -gt 1 ]; then
      run_keel "$case#$round" "$kernel" "$vcpus" "$action"
    fi
    keel_cs=$BOOT_CS
    keel_uptime=$(field uptime "$MARKER")
    run_qemu "$case/qemu#$round" "$kernel" "$vcpus"
    ratio=-
    if [ -n "$keel_cs" ] && [ -n "$BOOT_CS" ]; then
      ratio=$(seconds $(( keel_cs * 100 / BOOT_CS )))
    fi
    echo "KEEL-BENCH kernel=$kernel vcpus=$vcpus run=$round keel_s=$(seconds_or_dash "$keel_cs")" \
      "qemu_s=$(seconds_or_dash "$BOOT_CS") ratio=$ratio keel_uptime_s=$keel_uptime" \
      "qemu_uptime_s=$(field uptime "$MARKER") qemu_exit=$STATUS" \
      "qemu_nproc=$(field nproc "$MARKER") machine=$QEMU_MACHINE image=$L2_IMAGE"
    round=$(( round + 1 ))
  done
done

finish
