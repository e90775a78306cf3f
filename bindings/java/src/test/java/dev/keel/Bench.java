package dev.keel;

import com.sun.jna.Pointer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * The Java side of bindings/java/bench.sh: the work of {@code cargo bench -p benches --bench capi}
 * through the Java binding, so the numbers sit beside Rust's and the C ABI's.
 *
 * <ul>
 *   <li>placement: decide + commit + release of {@code {"id": "vm", "resources": {"VCPU": 2,
 *       "MEMORY_MB": 4096}}} on a 200-host cluster (spread, seed 7), per call; median of 5
 *       rounds of 20,000 calls after 3 s of uncounted ones (the JIT's warm-up; the first round
 *       is printed as the cold figure);
 *   <li>the same four libkeel calls made straight through JNA, without the binding's objects
 *       (no Claim, no Cleaner): the part of Java's cost that is JNA's, in alternating rounds;
 *   <li>VM: Keel's test guest ({@code keel.exit=reset}, 1 vCPU, 128 MiB) from config to exit and
 *       close, console discarded, once with a Java console callback (as the C bench uses a C
 *       callback) and once with the console on /dev/null; alternating, min and median.
 * </ul>
 *
 * Usage: {@code Bench GUEST [VM_RUNS]}; prints {@code key value} lines for bench.sh.
 */
public final class Bench {
    static final String REQUEST = "{\"id\": \"vm\", \"resources\": {\"VCPU\": 2, \"MEMORY_MB\": 4096}}";

    private Bench() {}

    static String clusterJson(int hosts) {
        List<String> list = new ArrayList<>();
        for (int i = 0; i < hosts; i++) {
            list.add("{\"name\": \"h" + i + "\", \"inventories\": {\"VCPU\": {\"total\": 64}, \"MEMORY_MB\": {\"total\": 262144}}}");
        }
        return "{\"hosts\": [" + String.join(",", list) + "]}";
    }

    static double median(List<Double> values) {
        List<Double> sorted = new ArrayList<>(values);
        Collections.sort(sorted);
        return sorted.get(sorted.size() / 2);
    }

    static double placementRound(Placer placer, int calls) {
        long start = System.nanoTime();
        for (int i = 0; i < calls; i++) {
            try (Claim claim = placer.decide(REQUEST)) {
                claim.commit();
            }
            placer.release("vm");
        }
        return (System.nanoTime() - start) / (double) calls;
    }

    /** decide + commit + free + release straight through JNA: what the binding adds is the rest. */
    static double rawRound(long placer, int calls) {
        byte[] consumer = Status.cstr("consumer", "vm");
        long start = System.nanoTime();
        for (int i = 0; i < calls; i++) {
            Pointer block = Scratch.get().withText("request", REQUEST);
            Status.check(KeelNative.keel_placer_decide(placer, block.share(Scratch.TEXT), block));
            long claim = block.getLong(0);
            Status.check(KeelNative.keel_claim_commit(claim));
            Status.check(KeelNative.keel_claim_free(claim));
            Status.check(KeelNative.keel_placer_release(placer, consumer));
        }
        return (System.nanoTime() - start) / (double) calls;
    }

    static double boot(String guest, boolean javaCallback) {
        long start = System.nanoTime();
        try (VmConfig config = new VmConfig(guest).memoryMib(128).cmdline("keel.exit=reset")) {
            if (javaCallback) {
                config.console(bytes -> {});
            } else {
                config.consoleDiscard();
            }
            try (Vm vm = config.build()) {
                config.close();
                vm.start();
                ExitReason reason = vm.waitFor(Duration.ofSeconds(10));
                if (reason != ExitReason.RESET) {
                    throw new IllegalStateException("guest exited with " + reason + ", not RESET");
                }
            }
        }
        return (System.nanoTime() - start) / 1e6;
    }

    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: Bench GUEST [VM_RUNS]");
            System.exit(2);
        }
        String guest = args[0];
        int vmRuns = args.length > 1 ? Integer.parseInt(args[1]) : 20;

        int calls = 20_000;
        List<Double> rounds = new ArrayList<>();
        List<Double> raw = new ArrayList<>();
        try (Cluster cluster = Cluster.fromJson(clusterJson(200)); Placer placer = new Placer(cluster, Policy.SPREAD, 7)) {
            long placerId = placer.handle().get();
            // Uncounted rounds first, for 3 s at least, so the JIT has compiled both paths (on a
            // busy 2-core machine its compiler threads need a while); the first is reported.
            double cold = placementRound(placer, calls);
            long warm = System.nanoTime() + 3_000_000_000L;
            while (System.nanoTime() < warm) {
                placementRound(placer, calls);
                rawRound(placerId, calls);
            }
            for (int i = 0; i < 5; i++) {
                rounds.add(placementRound(placer, calls));
                raw.add(rawRound(placerId, calls));
            }
            System.out.printf("java_placement_cold_ns %.0f%n", cold);
        }
        System.out.printf("java_placement_ns %.0f%n", median(rounds));
        System.out.printf("java_placement_raw_ns %.0f%n", median(raw));
        System.out.printf("java_placement_rounds %s raw %s (%d x %d calls)%n", rounds, raw, rounds.size(), calls);

        boot(guest, true);
        boot(guest, false);
        List<Double> callback = new ArrayList<>();
        List<Double> devnull = new ArrayList<>();
        for (int i = 0; i < vmRuns; i++) {
            callback.add(boot(guest, true));
            devnull.add(boot(guest, false));
        }
        System.out.printf("java_vm_callback_min_ms %.2f%n", Collections.min(callback));
        System.out.printf("java_vm_callback_median_ms %.2f%n", median(callback));
        System.out.printf("java_vm_devnull_min_ms %.2f%n", Collections.min(devnull));
        System.out.printf("java_vm_devnull_median_ms %.2f%n", median(devnull));
    }
}
