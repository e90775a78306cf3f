package dev.keel;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * Where a request was placed: the consumer (the request's id), the host, and what each resource
 * provider gives it.
 *
 * @param consumer the request's id
 * @param host the host chosen
 * @param allocations the amounts taken, provider by provider
 * @param json the placement as libkeel wrote it (with the full request), for persisting
 */
public record Placement(String consumer, String host, List<Allocation> allocations, String json) {
    /**
     * An amount of one resource class from one provider (a host, or a NUMA node in it).
     *
     * @param provider the provider's name
     * @param resourceClass the class ({@code VCPU}, {@code MEMORY_MB}, ...)
     * @param amount how much
     */
    public record Allocation(String provider, String resourceClass, long amount) {}

    static Placement parse(String json) {
        return of(Json.parseObject(json), json);
    }

    static Placement of(Map<String, Object> placement, String json) {
        List<Allocation> allocations = new ArrayList<>();
        Object resources = placement.get("resources");
        if (resources instanceof List) {
            for (Object item : (List<?>) resources) {
                Map<?, ?> resource = (Map<?, ?>) item;
                allocations.add(
                        new Allocation(
                                String.valueOf(resource.get("provider")),
                                String.valueOf(resource.get("class")),
                                ((Number) resource.get("amount")).longValue()));
            }
        }
        return new Placement(
                String.valueOf(placement.get("consumer")),
                String.valueOf(placement.get("host")),
                Collections.unmodifiableList(allocations),
                json);
    }

    /**
     * The placement's JSON document, parsed.
     *
     * @return its members
     */
    public Map<String, Object> data() {
        return Json.parseObject(json);
    }
}
