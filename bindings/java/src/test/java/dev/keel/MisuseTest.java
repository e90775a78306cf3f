package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.function.Executable;

/**
 * Each misuse of the C ABI (capi/tests/misuse.c) seen from Java: it throws its exception, with
 * libkeel's message naming the problem, and the JVM goes on (every later test runs in it).
 */
@Timeout(120)
class MisuseTest {
    static <T extends KeelException> T expect(Class<T> type, String needle, Executable call) {
        T err = assertThrows(type, call);
        assertTrue(err.getMessage().contains(needle), () -> "\"" + err.getMessage() + "\" lacks \"" + needle + "\"");
        return err;
    }

    @Test
    void closedObjectsThrowAndCloseIsIdempotent() {
        VmConfig config = new VmConfig(TestGuest.path());
        config.close();
        config.close();
        expect(HandleException.class, "VmConfig is closed", () -> config.vcpus(2));
        expect(HandleException.class, "VmConfig is closed", config::build);
        assertEquals("VmConfig(closed)", config.toString());

        Vm vm;
        try (VmConfig other = new VmConfig(TestGuest.path()).consoleDiscard()) {
            vm = other.build();
        }
        vm.close();
        vm.close();
        expect(HandleException.class, "Vm is closed", vm::start);
        expect(HandleException.class, "Vm is closed", vm::state);
        expect(HandleException.class, "Vm is closed", () -> vm.waitFor(Duration.ZERO));

        Cluster cluster = Cluster.fromJson(PlacementTest.CLUSTER);
        Placer placer = new Placer(cluster);
        Claim claim = placer.decide("{\"id\": \"x\", \"resources\": {\"VCPU\": 1}}");
        claim.close();
        placer.close();
        cluster.close();
        expect(HandleException.class, "Claim is closed", claim::commit);
        expect(HandleException.class, "Placer is closed", () -> placer.release("x"));
        expect(HandleException.class, "Cluster is closed", () -> new Placer(cluster));
    }

    @Test
    void badFieldsNameThemselvesAndLeaveTheConfigAsItWas() {
        try (VmConfig config = new VmConfig(TestGuest.path())) {
            InvalidArgumentException err = expect(InvalidArgumentException.class, "vcpus", () -> config.vcpus(0));
            assertEquals("KEEL_ERR_INVALID", err.statusName());
            assertEquals(1, config.vcpus(), "a refused value leaves the config as it was");
            expect(InvalidArgumentException.class, "vcpus", () -> config.vcpus(-1));
            expect(InvalidArgumentException.class, "memory", () -> config.memoryMib(-1));
            expect(InvalidArgumentException.class, "guest_cid", () -> config.vsock("v", 2, "/tmp/v.sock"));
            expect(InvalidArgumentException.class, "999 is not an open descriptor", () -> config.addNetFd("net0", 999, null));
            expect(InvalidArgumentException.class, "mac", () -> config.addNetTap("net1", "tap0", "52:54:zz"));
            config.addDisk("disk0", "/no/such/image");
            expect(InvalidArgumentException.class, "disk0", () -> config.addDisk("disk0", "/tmp/x"));
            expect(InvalidArgumentException.class, "/no/such/image", config::build);
            expect(NullArgumentException.class, "cmdline is NULL", () -> config.cmdline(null));
            expect(InvalidArgumentException.class, "cmdline: contains a NUL", () -> config.cmdline("a\0b"));
        }
        expect(InvalidArgumentException.class, "not a VM config", () -> VmConfig.fromJson("{\"vcpus\": -1}"));
        expect(InvalidArgumentException.class, "not a VM config", () -> VmConfig.fromJson(Map.of("vcpus", "two")));
        expect(NullArgumentException.class, "kernel is NULL", () -> new VmConfig((String) null));
    }

    @Test
    void wrongStates() {
        try (VmConfig config = new VmConfig(TestGuest.path()).cmdline(TestGuest.UNTIL_POWER_BUTTON).consoleDiscard();
                Vm vm = config.build()) {
            expect(StateException.class, "cannot pause", vm::pause);
            expect(StateException.class, "never started", () -> vm.waitFor(Duration.ofSeconds(1)));
            vm.start();
            expect(StateException.class, "not created", vm::start);
            expect(KeelTimeoutException.class, "still runs", () -> vm.waitFor(Duration.ofMillis(50)));
            vm.stop();
            assertEquals(ExitReason.STOPPED, vm.waitFor(Duration.ofSeconds(10)));
            expect(StateException.class, "cannot pause", vm::pause);
            expect(StateException.class, "cannot resume", vm::resume);
        }
        try (Cluster cluster = Cluster.fromYaml("hosts:\n- name: a\n  inventories: {VCPU: {total: 4}}\n");
                Placer placer = new Placer(cluster)) {
            expect(StateException.class, "not a rejection", placer::explain);
            expect(InvalidArgumentException.class, "placement request", () -> placer.decide("{\"id\": "));
            expect(InvalidArgumentException.class, "GPU", () -> placer.decide("{\"id\": \"x\", \"resources\": {\"GPU\": 1}}"));
            try (Claim claim = placer.decide("{\"id\": \"x\", \"resources\": {\"VCPU\": 4}}")) {
                claim.commit();
                expect(StateException.class, "committed already", claim::commit);
            }
            expect(InvalidArgumentException.class, "nobody", () -> placer.release("nobody"));
            expect(NullArgumentException.class, "request is NULL", () -> placer.decide((String) null));
            expect(InvalidArgumentException.class, "consumer: contains a NUL", () -> placer.release("a\0b"));
        }
        expect(InvalidArgumentException.class, "cluster description", () -> Cluster.fromJson("{\"hosts\": 3}"));
    }

    @Test
    void blockingCallsFromACallbackThrowThreadException() {
        AtomicReference<Vm> self = new AtomicReference<>();
        Map<String, Throwable> results = new ConcurrentHashMap<>();
        try (VmConfig config =
                new VmConfig(TestGuest.path())
                        .cmdline(TestGuest.UNTIL_POWER_BUTTON)
                        .console(bytes -> {
                            Vm vm = self.get();
                            if (vm != null && results.isEmpty()) {
                                results.put("wait", caught(() -> vm.waitFor(Duration.ZERO)));
                                results.put("pause", caught(vm::pause));
                                results.put("close", caught(vm::close));
                                results.put("state", caught(vm::state));
                            }
                        })) {
            Vm vm = config.build();
            self.set(vm);
            vm.start();
            vm.powerButton();
            assertEquals(ExitReason.SHUTDOWN, vm.waitFor(Duration.ofSeconds(10)));
            for (String call : new String[] {"wait", "pause", "close"}) {
                ThreadException err = assertInstanceOf(ThreadException.class, results.get(call), call + ": " + results);
                assertTrue(err.getMessage().contains("inside a Keel callback"), err.getMessage());
            }
            assertInstanceOf(NoError.class, results.get("state"), "reading the state from a callback is allowed");
            // close() from the callback was refused, so the VM is still ours to close.
            assertEquals(VmState.EXITED, vm.state());
            vm.close();
            expect(HandleException.class, "Vm is closed", vm::state);
        }
    }

    @Test
    void aThrowingCallbackDoesNotHurtTheVm() {
        Thread.UncaughtExceptionHandler previous = Thread.getDefaultUncaughtExceptionHandler();
        Map<String, Throwable> reported = new ConcurrentHashMap<>();
        Thread.setDefaultUncaughtExceptionHandler((thread, err) -> reported.put(thread.getName(), err));
        try (VmConfig config =
                        new VmConfig(TestGuest.path())
                                .cmdline(TestGuest.RESET_AT_ONCE)
                                .console(bytes -> {
                                    throw new IllegalStateException("console callback failed on purpose");
                                });
                Vm vm = config.build()) {
            vm.onStateChange(state -> {
                throw new IllegalStateException("state listener failed on purpose");
            });
            vm.start();
            assertEquals(ExitReason.RESET, vm.waitFor(Duration.ofSeconds(10)));
        } finally {
            Thread.setDefaultUncaughtExceptionHandler(previous);
        }
        assertTrue(reported.containsKey("keel-console"), reported.toString());
        assertTrue(reported.containsKey("keel-state"), reported.toString());
    }

    /** The result of a call that returned normally. */
    static final class NoError extends Throwable {
        private static final long serialVersionUID = 1L;
    }

    static Throwable caught(Runnable call) {
        try {
            call.run();
            return new NoError();
        } catch (Throwable err) {
            return err;
        }
    }
}
