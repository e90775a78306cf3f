package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The binding's small JSON reader and writer. */
class JsonTest {
    @Test
    void readsWhatLibkeelWrites() {
        Map<String, Object> value =
                Json.parseObject("{\"a\": [1, -2, 3.5, 1e3, 18446744073709551615], \"b\": {\"c\": null, \"d\": true},"
                        + " \"e\": \"tab\\t\\\"q\\\" \\u00e9\", \"f\": []}");
        assertEquals(List.of(1L, -2L, 3.5, 1000.0, new BigInteger("18446744073709551615")), value.get("a"));
        Map<?, ?> b = (Map<?, ?>) value.get("b");
        assertEquals(Arrays.asList("c", "d"), List.copyOf(b.keySet()));
        assertEquals(Arrays.asList(null, true), Arrays.asList(b.get("c"), b.get("d")));
        assertEquals("tab\t\"q\" é", value.get("e"));
        assertEquals(List.of(), value.get("f"));
    }

    @Test
    void writesWhatItReads() {
        Map<String, Object> document = new LinkedHashMap<>();
        document.put("id", "vm-1");
        document.put("resources", Map.of("VCPU", 2));
        document.put("list", List.of(1, 2.5, "x\n", Policy.PACK));
        document.put("none", null);
        String text = Json.write(document);
        assertEquals("{\"id\":\"vm-1\",\"resources\":{\"VCPU\":2},\"list\":[1,2.5,\"x\\n\",\"PACK\"],\"none\":null}", text);
        assertEquals(Json.parse(text), Json.parse(Json.write(Json.parse(text))));
    }

    @Test
    void refusesWhatIsNotJson() {
        for (String bad : new String[] {"", "{", "{\"a\" 1}", "[1,]", "tru", "\"open", "1 2", "{\"a\": 01x}"}) {
            InvalidArgumentException err = assertThrows(InvalidArgumentException.class, () -> Json.parse(bad), bad);
            assertTrue(err.getMessage().startsWith("JSON: "), err.getMessage());
        }
        assertThrows(InvalidArgumentException.class, () -> Json.write(new Object()));
        assertThrows(InvalidArgumentException.class, () -> Json.write(Double.NaN));
    }
}
