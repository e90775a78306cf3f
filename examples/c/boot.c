/*
 * Boots a kernel through libkeel, prints its console, pauses and resumes it, presses the power
 * button, and places a VM on a small cluster.
 *
 *   cargo build --profile capi -p keel-capi
 *   cc -o boot examples/c/boot.c -Icapi/include -Ltarget/capi -lkeel -Wl,-rpath,$PWD/target/capi
 *   ./boot target/guest/x86_64-unknown-none/release/keel-test-guest
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

#define CHECK(call)                                                                  \
    do {                                                                             \
        keel_status status_ = (call);                                                \
        if (status_ != KEEL_OK) {                                                    \
            fprintf(stderr, "%s: %s\n", keel_status_name(status_), keel_last_error()); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static void on_console(void *user, const uint8_t *data, size_t len) {
    (void)user;
    fwrite(data, 1, len, stdout);
    fflush(stdout);
}

static void on_state(void *user, int32_t state) {
    int *changes = user;
    ++*changes;
    (void)state;
}

static const char *CLUSTER =
    "{\"hosts\": ["
    " {\"name\": \"a\", \"inventories\": {\"VCPU\": {\"total\": 8}, \"MEMORY_MB\": {\"total\": 16384}}},"
    " {\"name\": \"b\", \"inventories\": {\"VCPU\": {\"total\": 8}, \"MEMORY_MB\": {\"total\": 4096}}}"
    "]}";

int main(int argc, char **argv) {
    const char *kernel = argc > 1 ? argv[1] : getenv("KEEL_TEST_GUEST");
    if (kernel == NULL) {
        fprintf(stderr, "usage: %s KERNEL\n", argv[0]);
        return 2;
    }
    if (keel_abi_version() >> 16 != KEEL_ABI_MAJOR) {
        fprintf(stderr, "libkeel ABI %u, header %u\n", keel_abi_version() >> 16, KEEL_ABI_MAJOR);
        return 2;
    }

    /* A VM: 2 vCPUs, 128 MiB, the console on a callback. */
    keel_config_t config;
    CHECK(keel_config_new(kernel, &config));
    CHECK(keel_config_set_vcpus(config, 2));
    CHECK(keel_config_set_memory_mib(config, 128));
    CHECK(keel_config_set_cmdline(config, "keel.cpus=2 keel.ticks=0 keel.tick_tsc=2000000 keel.power_button"));
    CHECK(keel_config_set_console_callback(config, on_console, NULL));
    /* valgrind cannot run seccomp filters: scripts/capi-check.sh turns Keel's off there. */
    if (getenv("KEEL_SECCOMP_OFF") != NULL) {
        CHECK(keel_config_set_seccomp(config, KEEL_SECCOMP_OFF));
    }
    keel_vm_t vm;
    CHECK(keel_vm_build(config, &vm));
    CHECK(keel_config_free(config));

    int changes = 0;
    CHECK(keel_vm_on_state_change(vm, on_state, &changes));
    CHECK(keel_vm_start(vm));
    CHECK(keel_vm_pause(vm));
    int32_t state;
    CHECK(keel_vm_state(vm, &state));
    printf("\nlibkeel: paused (state %d)\n", state);
    CHECK(keel_vm_resume(vm));
    int32_t reason;
    if (keel_vm_wait(vm, 200, &reason) != KEEL_ERR_TIMEOUT) {
        fprintf(stderr, "the guest should still run\n");
        return 1;
    }
    CHECK(keel_vm_power_button(vm));
    CHECK(keel_vm_wait(vm, 10000, &reason));
    char why[128];
    CHECK(keel_vm_describe_exit(vm, why, sizeof why, NULL));
    printf("libkeel: exit %d (%s), %d state changes\n", reason, why, changes);
    CHECK(keel_vm_free(vm));

    /* A placement: 12 GiB fits host a only. */
    keel_cluster_t cluster;
    keel_placer_t placer;
    keel_claim_t claim;
    CHECK(keel_cluster_load(CLUSTER, KEEL_FORMAT_JSON, &cluster));
    CHECK(keel_placer_new(cluster, "pack", 42, &placer));
    CHECK(keel_cluster_free(cluster));
    CHECK(keel_placer_decide(placer, "{\"id\": \"vm-1\", \"resources\": {\"VCPU\": 2, \"MEMORY_MB\": 12288}}", &claim));
    size_t needed = 0;
    if (keel_claim_placement(claim, NULL, 0, &needed) != KEEL_ERR_BUFFER) return 1;
    char *placement = malloc(needed);
    CHECK(keel_claim_placement(claim, placement, needed, NULL));
    printf("libkeel: placed %s\n", placement);
    free(placement);
    CHECK(keel_claim_commit(claim));
    CHECK(keel_claim_free(claim));
    keel_status status = keel_placer_decide(placer, "{\"id\": \"vm-2\", \"resources\": {\"MEMORY_MB\": 12288}}", &claim);
    printf("libkeel: vm-2 %s: %s\n", keel_status_name(status), keel_last_error());
    CHECK(keel_placer_free(placer));

    if (keel_live_handles() != 0) {
        fprintf(stderr, "%llu handles leaked\n", (unsigned long long)keel_live_handles());
        return 1;
    }
    return reason == KEEL_EXIT_SHUTDOWN && status == KEEL_ERR_UNSCHEDULABLE ? 0 : 1;
}
