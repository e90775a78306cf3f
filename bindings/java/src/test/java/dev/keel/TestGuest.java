package dev.keel;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;

/** Keel's test guest and the host facts the tests count. */
final class TestGuest {
    /** Ticks until the ACPI power button, then powers off (SHUTDOWN). */
    static final String UNTIL_POWER_BUTTON = "keel.ticks=0 keel.tick_tsc=2000000 keel.power_button";
    /** Resets at once (RESET). */
    static final String RESET_AT_ONCE = "keel.exit=reset";

    private TestGuest() {}

    /**
     * The test guest's path: KEEL_TEST_GUEST, or the repository's build of it. Missing it, or
     * /dev/kvm, fails the test: these tests are for a machine with KVM.
     */
    static String path() {
        String env = System.getenv("KEEL_TEST_GUEST");
        Path guest =
                env != null && !env.isEmpty()
                        ? Path.of(env)
                        : Path.of("../../target/guest/x86_64-unknown-none/release/keel-test-guest").toAbsolutePath().normalize();
        if (!Files.isRegularFile(guest)) {
            fail("no test guest at " + guest + ": build it with `cargo run --release --example boot` or set KEEL_TEST_GUEST");
        }
        Path kvm = Path.of("/dev/kvm");
        if (!Files.isReadable(kvm) || !Files.isWritable(kvm)) {
            fail("/dev/kvm is not usable");
        }
        return guest.toString();
    }

    /** Open descriptors of this process. */
    static long openFds() {
        try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
            return fds.count();
        } catch (IOException err) {
            throw new AssertionError(err);
        }
    }

    /** What each open descriptor of this process is, for failure messages. */
    static String describeFds() {
        StringBuilder out = new StringBuilder();
        try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
            fds.forEach(fd -> {
                try {
                    out.append(fd.getFileName()).append(" -> ").append(Files.readSymbolicLink(fd)).append('\n');
                } catch (IOException gone) {
                    // The listing's own descriptor, closed by now.
                }
            });
        } catch (IOException err) {
            throw new AssertionError(err);
        }
        return out.toString();
    }

    /** Threads of this process, native ones included. */
    static long threads() {
        try (Stream<Path> tasks = Files.list(Path.of("/proc/self/task"))) {
            return tasks.count();
        } catch (IOException err) {
            throw new AssertionError(err);
        }
    }
}
