package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Create/close cycles leave nothing behind: libkeel's live handles, this process's descriptors
 * and threads (vCPU and state threads that JNA attached to the JVM) are back where they started.
 */
@Timeout(300)
class LeakTest {
    static final int CYCLES = 1000;

    @Test
    void thousandCreateCloseCyclesLeaveNoHandleFdOrThread() {
        String guest = TestGuest.path();
        warmUp(guest);
        long handles = Keel.liveHandles();
        long fds = TestGuest.openFds();
        long threads = TestGuest.threads();
        for (int i = 0; i < CYCLES; i++) {
            // A VM with a Java console callback, built (KVM VM, guest memory, kernel loaded) and
            // closed; every tenth also with a state listener, booted to its reset exit. A config
            // with a disk. A placement decided, committed and released.
            boolean boot = i % 10 == 0;
            try (VmConfig config = new VmConfig(guest).cmdline(TestGuest.RESET_AT_ONCE).console(bytes -> {});
                    Vm vm = config.build()) {
                config.addDisk("d", "/tmp/x");
                if (boot) {
                    vm.onStateChange(state -> {});
                    vm.start();
                    assertEquals(ExitReason.RESET, vm.waitFor(Duration.ofSeconds(10)));
                }
            }
            try (Cluster cluster = Cluster.fromJson(PlacementTest.CLUSTER);
                    Placer placer = new Placer(cluster);
                    Claim claim = placer.decide("{\"id\": \"v\", \"resources\": {\"VCPU\": 1}}")) {
                claim.commit();
                placer.release("v");
            }
        }
        assertEquals(handles, Keel.liveHandles(), "live libkeel handles");
        assertEquals(fds, TestGuest.openFds(), "open descriptors");
        // The JVM starts and ends JIT compiler threads as it likes; a leak would add one per VM.
        long after = settledThreads(threads);
        assertTrue(after <= threads + 2, "threads: " + threads + " before, " + after + " after");
    }

    @Test
    void forgottenObjectsAreFreedByTheCleaner() throws InterruptedException {
        String guest = TestGuest.path();
        warmUp(guest);
        long handles = Keel.liveHandles();
        long fds = TestGuest.openFds();
        String before = TestGuest.describeFds();
        for (int i = 0; i < 100; i++) {
            VmConfig config = new VmConfig(guest).console(bytes -> {});
            config.build();
            Cluster cluster = Cluster.fromJson(PlacementTest.CLUSTER);
            new Placer(cluster).decide("{\"id\": \"v\", \"resources\": {\"VCPU\": 1}}");
        }
        assertTrue(Keel.liveHandles() >= handles + 500, "the forgotten objects hold handles until collected");
        long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
        // The Cleaner frees on its own thread: a VM's handle leaves libkeel's table first, its
        // descriptors close as keel_vm_free finishes, so wait for both.
        while ((Keel.liveHandles() != handles || TestGuest.openFds() != fds) && System.nanoTime() < deadline) {
            System.gc();
            Thread.sleep(20);
        }
        assertEquals(handles, Keel.liveHandles(), "live handles after the Cleaner ran");
        assertEquals(fds, TestGuest.openFds(), () -> "open descriptors after the Cleaner ran; before:\n" + before + "after:\n" + TestGuest.describeFds());
    }

    /** One of each object first, so what the JVM and JNA set up once is in the baseline. */
    static void warmUp(String guest) {
        try (VmConfig config = new VmConfig(guest).cmdline(TestGuest.RESET_AT_ONCE).console(bytes -> {});
                Vm vm = config.build()) {
            vm.onStateChange(state -> {});
            vm.start();
            vm.waitFor(Duration.ofSeconds(10));
        }
        try (Cluster cluster = Cluster.fromJson(PlacementTest.CLUSTER); Placer placer = new Placer(cluster)) {
            placer.place("{\"id\": \"v\", \"resources\": {\"VCPU\": 1}}");
        }
    }

    /** The thread count once threads that are ending have gone (at most 5 s). */
    static long settledThreads(long target) {
        long deadline = System.nanoTime() + Duration.ofSeconds(5).toNanos();
        long now = TestGuest.threads();
        while (now > target && System.nanoTime() < deadline) {
            try {
                Thread.sleep(10);
            } catch (InterruptedException err) {
                Thread.currentThread().interrupt();
                break;
            }
            now = TestGuest.threads();
        }
        return now;
    }
}
