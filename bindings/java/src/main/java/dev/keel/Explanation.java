package dev.keel;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * Why a request found no host, as data: the summary a person reads ({@code "0/2 hosts available: 2
 * insufficient MEMORY_MB"}), the reasons with how many hosts each ruled out, and the whole
 * explanation libkeel wrote (structured details, per-host reasons when recorded).
 *
 * @param request the request's id
 * @param summary one line, kube-scheduler style
 * @param reasons each reason and the number of hosts it ruled out, most frequent first
 * @param json the full explanation as JSON
 */
public record Explanation(String request, String summary, List<Reason> reasons, String json) {
    /**
     * One reason hosts were ruled out.
     *
     * @param reason the reason ({@code "insufficient MEMORY_MB"})
     * @param hosts how many hosts it ruled out
     */
    public record Reason(String reason, long hosts) {}

    static Explanation parse(String json) {
        Map<String, Object> explanation = Json.parseObject(json);
        List<Reason> reasons = new ArrayList<>();
        Object list = explanation.get("reasons");
        if (list instanceof List) {
            for (Object item : (List<?>) list) {
                List<?> pair = (List<?>) item;
                reasons.add(new Reason(String.valueOf(pair.get(0)), ((Number) pair.get(1)).longValue()));
            }
        }
        return new Explanation(
                String.valueOf(explanation.get("request")),
                String.valueOf(explanation.get("summary")),
                Collections.unmodifiableList(reasons),
                json);
    }

    /**
     * The explanation's JSON document, parsed ({@code details}, {@code per_host}, {@code
     * host_reasons} beside the fields above).
     *
     * @return its members
     */
    public Map<String, Object> data() {
        return Json.parseObject(json);
    }
}
