package dev.keel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** How libkeel is found, each case in a fresh JVM (a JVM loads it once). */
@Timeout(120)
class LibraryLoadingTest {
    static List<String> probe(Map<String, String> env, String... jvmArgs) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>();
        command.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        command.addAll(List.of(jvmArgs));
        command.addAll(List.of("-cp", System.getProperty("java.class.path"), LoadProbe.class.getName()));
        ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true);
        builder.environment().remove("KEEL_LIBRARY");
        builder.environment().remove("LD_LIBRARY_PATH");
        builder.environment().putAll(env);
        Process process = builder.start();
        String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(process.waitFor(60, TimeUnit.SECONDS), "probe JVM hung");
        assertEquals(0, process.exitValue(), output);
        return output.lines().toList();
    }

    static String library() {
        return System.getProperty(NativeLoader.PROPERTY);
    }

    @Test
    void foundThroughTheProperty() throws Exception {
        List<String> lines = probe(Map.of(), "-D" + NativeLoader.PROPERTY + "=" + library());
        assertTrue(lines.get(0).startsWith("loaded ") && lines.get(0).contains("libkeel.so"), lines.toString());
    }

    @Test
    void foundThroughJavaLibraryPath() throws Exception {
        Path dir = Path.of(library());
        List<String> lines = probe(Map.of(), "-Djava.library.path=" + (dir.toFile().isDirectory() ? dir : dir.getParent()));
        assertTrue(lines.get(0).startsWith("loaded "), lines.toString());
    }

    @Test
    void foundThroughKeelLibrary() throws Exception {
        List<String> lines = probe(Map.of("KEEL_LIBRARY", library()));
        assertTrue(lines.get(0).startsWith("loaded "), lines.toString());
    }

    @Test
    void aWrongPropertyIsNamedEveryTime() throws Exception {
        List<String> lines = probe(Map.of(), "-D" + NativeLoader.PROPERTY + "=/no/such/dir");
        assertEquals(2, lines.size(), lines.toString());
        assertTrue(lines.get(0).startsWith("error libkeel not found at -Dkeel.library.path=\"/no/such/dir\""), lines.get(0));
        assertTrue(lines.get(0).contains("java.library.path"), lines.get(0));
        assertEquals(lines.get(0), lines.get(1), "the second attempt fails the same way, no NoClassDefFoundError");
    }

    @Test
    void missingEverywhereNamesBothSettings() throws Exception {
        List<String> lines = probe(Map.of(), "-Djava.library.path=/no/such/lib");
        Assumptions.assumeFalse(lines.get(0).startsWith("loaded "), "libkeel is installed system-wide here: " + lines);
        String message = lines.get(0);
        assertTrue(message.startsWith("error libkeel not found: set -Dkeel.library.path="), message);
        assertTrue(message.contains("java.library.path (now \"/no/such/lib\")"), message);
        assertEquals(message, lines.get(1));
    }
}
