#!/usr/bin/env bash
# The C ABI end to end: builds libkeel (profile `capi`), checks what it exports, compiles the C
# example and the misuse tests with cc and runs them on /dev/kvm (also under valgrind: no
# invalid access, nothing definitely lost), then runs the Python (pytest), Go (go test) and Java
# (mvn test, JUnit) bindings' tests against the same library. Needs the test guest built (cargo
# test does it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export KEEL_TEST_GUEST=${KEEL_TEST_GUEST:-$root/target/guest/x86_64-unknown-none/release/keel-test-guest}
[ -f "$KEEL_TEST_GUEST" ] || { echo "no test guest at $KEEL_TEST_GUEST (run cargo test first)" >&2; exit 1; }

echo "-- libkeel"
cargo build --quiet --profile capi -p keel-capi
lib=$root/target/capi
ln -sf libkeel.so "$lib/libkeel.so.0"
readelf -d "$lib/libkeel.so" | grep -q 'SONAME.*\[libkeel.so.0\]' || { echo "libkeel.so lacks soname libkeel.so.0" >&2; exit 1; }
leaked=$(nm -D --defined-only "$lib/libkeel.so" | awk '{print $3}' | grep -v '^keel_' || true)
[ -z "$leaked" ] || { echo "libkeel.so exports more than keel_*: $leaked" >&2; exit 1; }
echo "exports: $(nm -D --defined-only "$lib/libkeel.so" | wc -l) keel_* symbols, soname libkeel.so.0"

echo "-- C example and misuse tests (cc)"
out=$root/target/capi-c
mkdir -p "$out"
for program in examples/c/boot.c capi/tests/misuse.c; do
  name=$(basename "$program" .c)
  cc -std=c11 -Wall -Wextra -Werror -o "$out/$name" "$program" -Icapi/include -L"$lib" -lkeel -Wl,-rpath,"$lib"
done
"$out/boot" "$KEEL_TEST_GUEST" > "$out/boot.log"
tail -3 "$out/boot.log"
"$out/misuse" "$KEEL_TEST_GUEST" > "$out/misuse.log" || { cat "$out/misuse.log"; exit 1; }
tail -1 "$out/misuse.log"
# The static library links too.
cc -std=c11 -Wall -Werror -o "$out/boot-static" examples/c/boot.c -Icapi/include "$lib/libkeel.a" -lpthread -ldl -lm
"$out/boot-static" "$KEEL_TEST_GUEST" > /dev/null

echo "-- valgrind"
for name in boot misuse; do
  # valgrind does not implement seccomp(2): the programs turn Keel's filters off under it.
  KEEL_SECCOMP_OFF=1 valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=3 \
    --log-file="$out/$name.valgrind" "$out/$name" "$KEEL_TEST_GUEST" > /dev/null \
    || { cat "$out/$name.valgrind"; echo "valgrind found errors in $name" >&2; exit 1; }
  echo "$name: valgrind clean (0 errors, 0 bytes definitely lost)"
done

echo "-- Python binding (pytest)"
(cd bindings/python && PYTHONPATH=. KEEL_LIBRARY="$lib/libkeel.so.0" python3 -m pytest -q -p no:cacheprovider)
if python3 -m pip --version > /dev/null 2>&1; then
  rm -rf "$out/pip"
  python3 -m pip install --quiet --no-deps --target "$out/pip" ./bindings/python
  (cd /tmp && PYTHONPATH="$out/pip" KEEL_LIBRARY="$lib/libkeel.so.0" python3 -c 'import keel; print("pip-installed keel, libkeel", keel.version())')
fi

echo "-- Go binding (go test)"
(cd bindings/go && go vet ./... && go test -count=1 ./...)

echo "-- Java binding (mvn test: JUnit 5 through Surefire, JNA on Java 17)"
reports=bindings/java/target/surefire-reports
rm -rf "$reports"
(cd bindings/java && mvn -q -B -Dstyle.color=never test -Dkeel.library.path="$lib")
# -q keeps Surefire quiet on success; say what ran.
tests=0 failed=0 skipped=0
for report in "$reports"/TEST-*.xml; do
  head=$(grep -m1 -o '<testsuite [^>]*' "$report")
  count() { printf '%s' "$head" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  tests=$((tests + $(count tests)))
  failed=$((failed + $(count failures) + $(count errors)))
  skipped=$((skipped + $(count skipped)))
done
[ "$tests" -gt 0 ] || { echo "the Java binding ran no test" >&2; exit 1; }
echo "java: $tests tests ($skipped skipped), $failed failed"
