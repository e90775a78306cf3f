package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Placement through the binding: a small cluster, a rejection and its explanation. */
class PlacementTest {
    static final String CLUSTER =
            "{\"hosts\": ["
                    + "{\"name\": \"a\", \"inventories\": {\"VCPU\": {\"total\": 8}, \"MEMORY_MB\": {\"total\": 16384}}},"
                    + "{\"name\": \"b\", \"inventories\": {\"VCPU\": {\"total\": 8}, \"MEMORY_MB\": {\"total\": 4096}}}]}";

    @Test
    void placeRejectExplainRelease() {
        try (Cluster cluster = Cluster.fromJson(CLUSTER); Placer placer = new Placer(cluster, Policy.PACK, 42)) {
            Placement placement = placer.place("{\"id\": \"vm-1\", \"resources\": {\"VCPU\": 2, \"MEMORY_MB\": 12288}}");
            assertEquals("vm-1", placement.consumer());
            assertEquals("a", placement.host());
            assertTrue(placement.allocations().contains(new Placement.Allocation("a", "MEMORY_MB", 12288)), placement.toString());
            assertTrue(placement.allocations().contains(new Placement.Allocation("a", "VCPU", 2)), placement.toString());

            UnschedulableException rejected =
                    assertThrows(
                            UnschedulableException.class,
                            () -> placer.decide(Map.of("id", "vm-2", "resources", Map.of("MEMORY_MB", 12288))));
            assertTrue(rejected.getMessage().contains("0/2 hosts available"), rejected.getMessage());
            assertEquals(Status.UNSCHEDULABLE, rejected.status());
            Explanation explanation = rejected.explanation();
            assertNotNull(explanation);
            assertEquals("vm-2", explanation.request());
            assertEquals("0/2 hosts available: 2 insufficient MEMORY_MB", explanation.summary());
            assertEquals(List.of(new Explanation.Reason("insufficient MEMORY_MB", 2)), explanation.reasons());
            assertEquals(explanation.summary(), explanation.data().get("summary"));
            // The placer remembers its last rejection.
            assertEquals(explanation, placer.explain());

            List<Placement> placements = placer.placements();
            assertEquals(1, placements.size());
            assertEquals("vm-1", placements.get(0).consumer());
            placer.release("vm-1");
            assertEquals("a", placer.place(Map.of("id", "vm-2", "resources", Map.of("MEMORY_MB", 12288))).host());
        }
    }

    @Test
    void claimsAreDecidedThenCommittedOrDropped() {
        try (Cluster cluster = Cluster.fromJson(CLUSTER); Placer placer = new Placer(cluster)) {
            try (Claim dropped = placer.decide("{\"id\": \"x\", \"resources\": {\"VCPU\": 8}}")) {
                assertEquals("x", dropped.placement().consumer());
            }
            assertEquals("[]", placer.placementsJson(), "a dropped claim allocates nothing");
            try (Claim claim = placer.decide("{\"id\": \"x\", \"resources\": {\"VCPU\": 8}}")) {
                claim.commit();
            }
            assertEquals(1, placer.placements().size());
        }
    }

    @Test
    void yamlAndFiles(@TempDir Path dir) throws Exception {
        String yaml = "hosts:\n- name: y\n  inventories: {VCPU: {total: 2}}\n";
        try (Cluster cluster = Cluster.fromYaml(yaml); Placer placer = new Placer(cluster)) {
            assertEquals("y", placer.place("{\"id\": \"x\", \"resources\": {\"VCPU\": 2}}").host());
        }
        Path file = dir.resolve("cluster.yml");
        Files.writeString(file, yaml);
        try (Cluster cluster = Cluster.load(file); Placer placer = new Placer(cluster)) {
            assertEquals("y", placer.place("{\"id\": \"x\", \"resources\": {\"VCPU\": 1}}").host());
        }
        Path json = dir.resolve("cluster.json");
        Files.writeString(json, CLUSTER);
        try (Cluster cluster = Cluster.load(json); Placer placer = new Placer(cluster)) {
            assertEquals(2, List.of(placer.place("{\"id\": \"p\", \"resources\": {\"VCPU\": 8}}").host(),
                    placer.place("{\"id\": \"q\", \"resources\": {\"VCPU\": 8}}").host()).stream().distinct().count());
        }
    }

    @Test
    void aPlacerOutlivesItsCluster() {
        Placer placer;
        try (Cluster cluster = Cluster.fromJson(CLUSTER)) {
            placer = new Placer(cluster, Policy.SPREAD, 1);
        }
        try (placer) {
            assertEquals("vm", placer.place("{\"id\": \"vm\", \"resources\": {\"VCPU\": 1}}").consumer());
        }
    }
}
