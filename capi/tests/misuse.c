/*
 * Every misuse of the C API the header warns about, one case each: the call must return its
 * error code with a message naming the problem, and the process must go on. Run by
 * scripts/capi-check.sh (also under valgrind). Argument: the test guest's path.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel.h"

static int failures = 0;
static int cases = 0;

static void expect_message(const char *what, keel_status got, keel_status want, const char *needle,
                           const char *message) {
    cases++;
    if (got != want || (needle != NULL && strstr(message, needle) == NULL)) {
        failures++;
        printf("FAIL %-44s got %s \"%s\", want %s with \"%s\"\n", what, keel_status_name(got),
               message, keel_status_name(want), needle ? needle : "");
    } else {
        printf("ok   %-44s %s: %s\n", what, keel_status_name(got), message);
    }
}

#define OK(call)                                                                       \
    do {                                                                               \
        keel_status s_ = (call);                                                       \
        if (s_ != KEEL_OK) {                                                           \
            printf("setup failed: %s: %s\n", keel_status_name(s_), keel_last_error()); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

static keel_vm_t callback_vm;
static keel_status from_callback_wait = -1;
static keel_status from_callback_pause = -1;
static keel_status from_callback_free = -1;
static char from_callback_message[3][256];

static void keep_message(int slot) {
    snprintf(from_callback_message[slot], sizeof from_callback_message[slot], "%s", keel_last_error());
}

static void console_misuse(void *user, const uint8_t *data, size_t len) {
    (void)user;
    (void)data;
    (void)len;
    if (from_callback_wait == -1) {
        from_callback_wait = keel_vm_wait(callback_vm, 0, NULL);
        keep_message(0);
        from_callback_pause = keel_vm_pause(callback_vm);
        keep_message(1);
        from_callback_free = keel_vm_free(callback_vm);
        keep_message(2);
    }
}

static void expect(const char *what, keel_status got, keel_status want, const char *needle) {
    expect_message(what, got, want, needle, keel_last_error());
}

int main(int argc, char **argv) {
    const char *kernel = argc > 1 ? argv[1] : getenv("KEEL_TEST_GUEST");
    if (kernel == NULL) {
        fprintf(stderr, "usage: %s KERNEL\n", argv[0]);
        return 2;
    }
    keel_config_t config, other;
    keel_vm_t vm;
    int32_t value;
    char small[4];
    size_t needed = 0;

    /* NULL pointers. */
    expect("NULL kernel", keel_config_new(NULL, &config), KEEL_ERR_NULL, "kernel is NULL");
    expect("NULL out pointer", keel_config_new(kernel, NULL), KEEL_ERR_NULL, "out is NULL");
    OK(keel_config_new(kernel, &config));
    expect("NULL state pointer", keel_config_set_cmdline(config, NULL), KEEL_ERR_NULL, "cmdline is NULL");
    expect("NULL callback", keel_config_set_console_callback(config, NULL, NULL), KEEL_ERR_NULL, "callback");

    /* Invalid UTF-8. */
    expect("invalid UTF-8", keel_config_set_cmdline(config, "keel.\xff\xfe"), KEEL_ERR_UTF8, "cmdline is not valid UTF-8");

    /* Bad values name their field; the config is unchanged. */
    expect("0 vCPUs", keel_config_set_vcpus(config, 0), KEEL_ERR_INVALID, "vcpus");
    expect("memory overflow", keel_config_set_memory_mib(config, UINT64_MAX), KEEL_ERR_INVALID, "memory");
    expect("unknown transport", keel_config_set_transport(config, 7), KEEL_ERR_INVALID, "transport: 7");
    expect("unknown seccomp mode", keel_config_set_seccomp(config, 2), KEEL_ERR_INVALID, "seccomp: 2");
    OK(keel_config_add_disk(config, "disk0", "/no/such/image", false, false));
    expect("duplicate device id", keel_config_add_disk(config, "disk0", "/tmp/x", false, false), KEEL_ERR_INVALID, "disk0");
    expect("vsock CID 2", keel_config_set_vsock(config, "v", 2, "/tmp/v.sock"), KEEL_ERR_INVALID, "cid");
    expect("closed TAP fd", keel_config_add_net_fd(config, "net0", 999, NULL), KEEL_ERR_INVALID, "999 is not an open descriptor");
    expect("bad MAC", keel_config_add_net_tap(config, "net1", "tap0", "52:54:zz"), KEEL_ERR_INVALID, "mac");
    expect("bad JSON config", keel_config_from_json("{\"vcpus\": -1}", &other), KEEL_ERR_INVALID, "not a VM config");

    /* A build that fails on the host names the file. */
    expect("missing disk image", keel_vm_build(config, &vm), KEEL_ERR_INVALID, "/no/such/image");

    /* Buffers. */
    expect("buffer too small", keel_config_to_json(config, small, sizeof small, &needed), KEEL_ERR_BUFFER, "are needed");
    if (needed <= sizeof small) {
        printf("FAIL needed not stored\n");
        failures++;
    }

    /* Handles: zero, never issued, wrong kind, freed, double free. */
    expect("handle 0", keel_vm_start(0), KEEL_ERR_HANDLE, "0 is never a handle");
    expect("forged handle", keel_vm_start(0x0200000100000999ULL), KEEL_ERR_HANDLE, "never issued");
    expect("config used as VM", keel_vm_start(config), KEEL_ERR_HANDLE, "is a VM config, expected a VM");
    OK(keel_config_free(config));
    expect("use after free", keel_config_set_vcpus(config, 2), KEEL_ERR_HANDLE, "freed already");
    expect("double free", keel_config_free(config), KEEL_ERR_HANDLE, "freed already");

    /* Wrong state. */
    OK(keel_config_new(kernel, &config));
    OK(keel_config_set_cmdline(config, "keel.ticks=0 keel.tick_tsc=2000000 keel.power_button"));
    int null_fd = open("/dev/null", O_WRONLY);
    OK(keel_config_set_console_fd(config, null_fd));
    close(null_fd); /* Keel writes to its own duplicate. */
    /* valgrind cannot run seccomp filters: scripts/capi-check.sh turns Keel's off there. */
    if (getenv("KEEL_SECCOMP_OFF") != NULL) {
        OK(keel_config_set_seccomp(config, KEEL_SECCOMP_OFF));
    }
    OK(keel_vm_build(config, &vm));
    expect("pause before start", keel_vm_pause(vm), KEEL_ERR_STATE, "cannot pause");
    expect("wait before start", keel_vm_wait(vm, 0, NULL), KEEL_ERR_STATE, "never started");
    expect("exit reason before exit", keel_vm_exit_reason(vm, &value), KEEL_ERR_STATE, "has not exited");
    OK(keel_vm_start(vm));
    expect("start twice", keel_vm_start(vm), KEEL_ERR_STATE, "not created");
    expect("wait times out", keel_vm_wait(vm, 50, NULL), KEEL_ERR_TIMEOUT, "still runs");
    OK(keel_vm_stop(vm));
    OK(keel_vm_wait(vm, 10000, &value));
    expect("pause after exit", keel_vm_pause(vm), KEEL_ERR_STATE, "cannot pause");
    expect("resume after exit", keel_vm_resume(vm), KEEL_ERR_STATE, "cannot resume");
    OK(keel_vm_free(vm));
    expect("VM double free", keel_vm_free(vm), KEEL_ERR_HANDLE, "freed already");

    /* Wrong thread: blocking calls from a callback are refused, not deadlocked. */
    OK(keel_config_set_console_callback(config, console_misuse, NULL));
    OK(keel_vm_build(config, &callback_vm));
    OK(keel_config_free(config));
    OK(keel_vm_start(callback_vm));
    OK(keel_vm_power_button(callback_vm));
    OK(keel_vm_wait(callback_vm, 10000, &value));
    expect_message("wait from a callback", from_callback_wait, KEEL_ERR_THREAD, "inside a Keel callback", from_callback_message[0]);
    expect_message("pause from a callback", from_callback_pause, KEEL_ERR_THREAD, "inside a Keel callback", from_callback_message[1]);
    expect_message("free from a callback", from_callback_free, KEEL_ERR_THREAD, "inside a Keel callback", from_callback_message[2]);
    OK(keel_vm_free(callback_vm));

    printf("live handles before placement: %llu\n", (unsigned long long)keel_live_handles());
    /* Placement misuse. */
    keel_cluster_t cluster;
    keel_placer_t placer;
    keel_claim_t claim;
    expect("cluster: bad format", keel_cluster_load("{}", 9, &cluster), KEEL_ERR_INVALID, "format: 9");
    expect("cluster: bad document", keel_cluster_load("{\"hosts\": 3}", KEEL_FORMAT_JSON, &cluster), KEEL_ERR_INVALID, "cluster description");
    OK(keel_cluster_load("hosts:\n- name: a\n  inventories: {VCPU: {total: 4}}\n", KEEL_FORMAT_YAML, &cluster));
    expect("bad policy", keel_placer_new(cluster, "fastest", 1, &placer), KEEL_ERR_INVALID, "policy: `fastest`");
    OK(keel_placer_new(cluster, "spread", 1, &placer));
    expect("request: bad JSON", keel_placer_decide(placer, "{\"id\": ", &claim), KEEL_ERR_INVALID, "placement request");
    expect("request: unknown class", keel_placer_decide(placer, "{\"id\": \"x\", \"resources\": {\"GPU\": 1}}", &claim), KEEL_ERR_INVALID, "GPU");
    expect("explain without a rejection", keel_placer_explain(placer, NULL, 0, NULL), KEEL_ERR_STATE, "not a rejection");
    OK(keel_placer_decide(placer, "{\"id\": \"x\", \"resources\": {\"VCPU\": 4}}", &claim));
    OK(keel_claim_commit(claim));
    expect("commit twice", keel_claim_commit(claim), KEEL_ERR_STATE, "committed already");
    expect("unschedulable", keel_placer_decide(placer, "{\"id\": \"y\", \"resources\": {\"VCPU\": 1}}", &claim), KEEL_ERR_UNSCHEDULABLE, "0/1 hosts available");
    expect("explanation too big for 4 bytes", keel_placer_explain(placer, small, sizeof small, &needed), KEEL_ERR_BUFFER, NULL);
    expect("release unknown consumer", keel_placer_release(placer, "nobody"), KEEL_ERR_INVALID, "nobody");
    OK(keel_placer_release(placer, "x"));
    expect("claim used as placer", keel_placer_free(claim), KEEL_ERR_HANDLE, "is a claim, expected a placer");
    OK(keel_claim_free(claim));
    OK(keel_placer_free(placer));
    OK(keel_cluster_free(cluster));

    if (keel_live_handles() != 0) {
        printf("FAIL %llu handles live at the end\n", (unsigned long long)keel_live_handles());
        failures++;
    }
    printf("misuse: %d cases, %d failed; the process is still here\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
