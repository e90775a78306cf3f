package keel_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	keel "keel.invalid/keel"
)

const forever = "keel.ticks=0 keel.tick_tsc=2000000 keel.power_button"

func guest(t *testing.T) string {
	t.Helper()
	path := os.Getenv("KEEL_TEST_GUEST")
	if path == "" {
		path = filepath.Join("..", "..", "target", "guest", "x86_64-unknown-none", "release", "keel-test-guest")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no test guest at %s: build it with `cargo run --release --example boot` or set KEEL_TEST_GUEST", path)
	}
	return path
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestBootPauseResumePowerButton(t *testing.T) {
	cfg, err := keel.NewConfig(guest(t))
	must(t, err)
	defer cfg.Close()
	must(t, cfg.SetVcpus(2))
	must(t, cfg.SetCmdline("keel.cpus=2 "+forever))
	reader, writer, err := os.Pipe()
	must(t, err)
	must(t, cfg.SetConsole(writer))
	writer.Close() // Keel writes to its own duplicate
	vm, err := cfg.Build()
	must(t, err)
	must(t, vm.Start())
	must(t, vm.Pause())
	if state, _ := vm.State(); state != keel.Paused {
		t.Fatalf("state %v, want paused", state)
	}
	must(t, vm.Resume())
	if _, err := vm.Wait(100 * time.Millisecond); !errors.Is(err, keel.ErrTimeout) {
		t.Fatalf("wait: %v, want a timeout", err)
	}
	must(t, vm.PowerButton())
	reason, err := vm.Wait(10 * time.Second)
	must(t, err)
	if reason != keel.Shutdown {
		t.Fatalf("exit %v, want shutdown", reason)
	}
	counters, err := vm.Counters()
	must(t, err)
	if vcpus := counters["vcpus"].([]any); len(vcpus) != 2 {
		t.Fatalf("counters for %d vCPUs", len(vcpus))
	}
	must(t, vm.Close())
	must(t, cfg.Close())
	output, err := io.ReadAll(reader)
	must(t, err)
	if !strings.Contains(string(output), "keel-guest: exit via=s5") {
		t.Fatalf("console: %q", output)
	}
}

// seccompOfVcpuThread reads the Seccomp field of this process's keel-vcpu-0 thread.
func seccompOfVcpuThread(t *testing.T) string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	must(t, err)
	for _, task := range tasks {
		comm, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "keel-vcpu-0" {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		must(t, err)
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "Seccomp:") {
				return strings.TrimSpace(strings.TrimPrefix(line, "Seccomp:"))
			}
		}
	}
	t.Fatal("no keel-vcpu-0 thread")
	return ""
}

func TestSeccompOnByDefaultAndOff(t *testing.T) {
	for _, on := range []bool{true, false} {
		cfg, err := keel.NewConfig(guest(t))
		must(t, err)
		must(t, cfg.SetCmdline(forever))
		if !on {
			must(t, cfg.SetSeccomp(false))
		}
		vm, err := cfg.Build()
		must(t, err)
		must(t, vm.Start())
		time.Sleep(100 * time.Millisecond) // the vCPU thread installs its filter as it starts
		want := map[bool]string{true: "2", false: "0"}[on]
		if got := seccompOfVcpuThread(t); got != want {
			t.Fatalf("seccomp %v: vCPU thread has Seccomp %s, want %s", on, got, want)
		}
		must(t, vm.PowerButton())
		_, err = vm.Wait(10 * time.Second)
		must(t, err)
		must(t, vm.Close())
		must(t, cfg.Close())
	}
}

func TestPlacement(t *testing.T) {
	cluster, err := keel.LoadCluster(`{"hosts": [
	  {"name": "a", "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 16384}}},
	  {"name": "b", "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 4096}}}]}`, false)
	must(t, err)
	defer cluster.Close()
	placer, err := keel.NewPlacer(cluster, "pack", 42)
	must(t, err)
	defer placer.Close()
	placement, err := placer.Place(map[string]any{"id": "vm-1", "resources": map[string]int{"VCPU": 2, "MEMORY_MB": 12288}})
	must(t, err)
	if placement.Host != "a" {
		t.Fatalf("placed on %s", placement.Host)
	}
	_, err = placer.Place(map[string]any{"id": "vm-2", "resources": map[string]int{"MEMORY_MB": 12288}})
	if !errors.Is(err, keel.ErrUnschedulable) {
		t.Fatalf("vm-2: %v", err)
	}
	explanation, err := placer.Explain()
	must(t, err)
	if explanation["summary"] != "0/2 hosts available: 2 insufficient MEMORY_MB" {
		t.Fatalf("explanation %v", explanation["summary"])
	}
	must(t, placer.Release("vm-1"))
}

func TestMisuse(t *testing.T) {
	cfg, err := keel.NewConfig(guest(t))
	must(t, err)
	if err := cfg.SetVcpus(0); !errors.Is(err, keel.ErrInvalid) || !strings.Contains(err.Error(), "vcpus") {
		t.Fatalf("0 vCPUs: %v", err)
	}
	must(t, cfg.SetCmdline(forever))
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	must(t, err)
	defer devnull.Close()
	must(t, cfg.SetConsole(devnull))
	vm, err := cfg.Build()
	must(t, err)
	if err := vm.Pause(); !errors.Is(err, keel.ErrState) {
		t.Fatalf("pause before start: %v", err)
	}
	if _, err := vm.ExitReason(); !errors.Is(err, keel.ErrState) {
		t.Fatalf("exit reason before exit: %v", err)
	}
	must(t, vm.Start())
	if err := vm.Start(); !errors.Is(err, keel.ErrState) {
		t.Fatalf("start twice: %v", err)
	}
	must(t, vm.Stop())
	if reason, err := vm.Wait(-1); err != nil || reason != keel.Stopped {
		t.Fatalf("wait: %v %v", reason, err)
	}
	must(t, vm.Close())
	must(t, vm.Close()) // twice is harmless
	if err := vm.Start(); !errors.Is(err, keel.ErrHandle) {
		t.Fatalf("start after close: %v", err)
	}
	must(t, cfg.Close())
	if err := cfg.SetVcpus(2); !errors.Is(err, keel.ErrHandle) {
		t.Fatalf("set after close: %v", err)
	}
	if _, err := keel.LoadCluster(`{"hosts": 3}`, false); !errors.Is(err, keel.ErrInvalid) || !strings.Contains(err.Error(), "cluster description") {
		t.Fatalf("bad cluster: %v", err)
	}
}

func TestCyclesLeaveNoHandles(t *testing.T) {
	before := keel.LiveHandles()
	for i := 0; i < 500; i++ {
		cfg, err := keel.NewConfig(guest(t))
		must(t, err)
		must(t, cfg.SetVcpus(2))
		must(t, cfg.Close())
	}
	// Forgotten objects are freed by finalizers.
	for i := 0; i < 100; i++ {
		if _, err := keel.NewConfig(guest(t)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 10 && keel.LiveHandles() != before; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if after := keel.LiveHandles(); after != before {
		t.Fatalf("%d handles live, %d before", after, before)
	}
}
