package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** VMs through the binding: Keel's test guest on /dev/kvm. */
@Timeout(120)
class VmTest {
    /** Opens a file from the console callback: refused under the vCPU filter, allowed without. */
    @Test
    void consoleCallbackRunsUnderTheVcpuFilterUnlessItIsOff() throws Exception {
        for (boolean seccomp : new boolean[] {true, false}) {
            List<String> opened = Collections.synchronizedList(new ArrayList<>());
            try (VmConfig config =
                            new VmConfig(TestGuest.path())
                                    .cmdline(TestGuest.RESET_AT_ONCE)
                                    .seccomp(seccomp)
                                    .console(bytes -> {
                                        if (opened.isEmpty()) {
                                            try (var in = Files.newInputStream(Path.of("/proc/self/status"))) {
                                                opened.add("opened");
                                            } catch (java.io.IOException err) {
                                                opened.add("refused");
                                            }
                                        }
                                    });
                    Vm vm = config.build()) {
                vm.start();
                assertEquals(ExitReason.RESET, vm.waitFor(Duration.ofSeconds(10)));
            }
            assertEquals(List.of(seccomp ? "refused" : "opened"), opened, "seccomp " + seccomp);
        }
    }

    @Test
    void bootPauseResumePowerButton() {
        ByteArrayOutputStream console = new ByteArrayOutputStream();
        List<VmState> states = Collections.synchronizedList(new ArrayList<>());
        try (VmConfig config =
                        new VmConfig(TestGuest.path())
                                .vcpus(2)
                                .memoryMib(128)
                                .cmdline("keel.cpus=2 " + TestGuest.UNTIL_POWER_BUTTON)
                                .console(bytes -> {
                                    synchronized (console) {
                                        console.writeBytes(bytes);
                                    }
                                });
                Vm vm = config.build()) {
            vm.onStateChange(states::add);
            assertEquals(VmState.CREATED, vm.state());
            assertEquals(Optional.empty(), vm.exitReason());
            assertEquals(Optional.empty(), vm.exitDescription());
            vm.start();
            vm.pause();
            assertEquals(VmState.PAUSED, vm.state());
            vm.resume();
            assertEquals(VmState.RUNNING, vm.state());
            KeelTimeoutException timeout = assertThrows(KeelTimeoutException.class, () -> vm.waitFor(Duration.ofMillis(100)));
            assertTrue(timeout.getMessage().contains("still runs after 100 ms"), timeout.getMessage());
            assertEquals("KEEL_ERR_TIMEOUT", timeout.statusName());
            vm.powerButton();
            assertEquals(ExitReason.SHUTDOWN, vm.waitFor(Duration.ofSeconds(10)));
            assertEquals(VmState.EXITED, vm.state());
            assertEquals(Optional.of(ExitReason.SHUTDOWN), vm.exitReason());
            assertEquals(Optional.of("guest shutdown"), vm.exitDescription());
            Map<String, Object> counters = vm.counters();
            assertEquals(2, ((List<?>) counters.get("vcpus")).size(), vm.countersJson());
        }
        String text;
        synchronized (console) {
            text = console.toString(StandardCharsets.UTF_8);
        }
        assertTrue(text.contains("keel-guest: boot protocol"), text);
        assertTrue(text.contains("keel-guest: exit via=s5"), text);
        // close() returned: every state the VM went through has been delivered, in order.
        assertEquals(List.of(VmState.CREATED, VmState.RUNNING, VmState.PAUSED, VmState.RUNNING), states.subList(0, 4), states.toString());
        assertEquals(VmState.EXITED, states.get(states.size() - 1), states.toString());
    }

    @Test
    void resetExitWithTheConsoleInAFile(@TempDir Path dir) throws Exception {
        Path log = dir.resolve("console.log");
        try (VmConfig config = new VmConfig(TestGuest.path()).cmdline(TestGuest.RESET_AT_ONCE).consoleFile(log);
                Vm vm = config.build()) {
            vm.start();
            assertEquals(ExitReason.RESET, vm.waitFor(Duration.ofSeconds(10)));
            assertEquals(Optional.of(ExitReason.RESET), vm.exitReason());
        }
        assertTrue(Files.readString(log).contains("keel-guest: exit via=reset"), Files.readString(log));
    }

    @Test
    void stopEndsARunningGuest() {
        try (VmConfig config = new VmConfig(TestGuest.path()).cmdline(TestGuest.UNTIL_POWER_BUTTON).consoleDiscard();
                Vm vm = config.build()) {
            vm.start();
            vm.stop();
            assertEquals(ExitReason.STOPPED, vm.waitFor(Duration.ofSeconds(10)));
        }
    }

    @Test
    void closeStopsAVmThatStillRuns() {
        long before = Keel.liveHandles();
        VmConfig config = new VmConfig(TestGuest.path()).cmdline(TestGuest.UNTIL_POWER_BUTTON).console(bytes -> {});
        Vm vm = config.build();
        config.close();
        vm.start();
        vm.close();
        assertTrue(vm.isClosed());
        assertEquals(before, Keel.liveHandles());
    }

    @Test
    void configBuilderRoundTrips() {
        try (VmConfig config =
                new VmConfig(TestGuest.path())
                        .vcpus(4)
                        .memoryMib(256)
                        .cmdline("console=ttyS0")
                        .initrd("/boot/initrd.img")
                        .transport(Transport.MMIO)
                        .addDisk("disk0", "/var/lib/images/root.img", true, false)
                        .addNetTap("net0", "tap0", "52:54:00:12:34:56")
                        .vsock("vsock0", 3, "/run/vm.vsock")
                        .rng()) {
            assertEquals(4, config.vcpus());
            assertEquals(256, config.memoryMib());
            assertEquals("console=ttyS0", config.cmdline());
            assertEquals(Optional.of("/boot/initrd.img"), config.initrd());
            assertEquals(TestGuest.path(), config.kernel());
            Map<String, Object> document = config.toMap();
            assertEquals("mmio", document.get("virtio_transport"));
            // C bools cross as JNA ints: both flags arrive as set, and unset ones as unset.
            config.addDisk("disk1", "/var/lib/images/data.img", false, true);
            List<?> disks = (List<?>) document.get("disks");
            assertEquals(Map.of("id", "disk0", "path", "/var/lib/images/root.img", "read_only", true, "direct", false), disks.get(0));
            assertEquals(
                    Map.of("id", "disk1", "path", "/var/lib/images/data.img", "read_only", false, "direct", true),
                    ((List<?>) config.toMap().get("disks")).get(1));
            assertEquals(1, ((List<?>) document.get("nets")).size());
            try (VmConfig copy = VmConfig.fromJson(config.toJson())) {
                assertEquals(config.toJson(), copy.toJson());
            }
            try (VmConfig fromMap = VmConfig.fromJson(document)) {
                assertEquals(4, fromMap.vcpus());
            }
            config.initrd((String) null);
            assertFalse(config.initrd().isPresent());
        }
    }

    @Test
    void libraryFacts() {
        assertTrue(Keel.version().matches("\\d+\\.\\d+\\.\\d+.*"), Keel.version());
        assertEquals(Keel.ABI_MAJOR, Keel.abiVersion() >>> 16);
        assertTrue(Keel.libraryFile().contains("libkeel"), Keel.libraryFile());
    }
}
