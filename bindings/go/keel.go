// Package keel runs VMs on KVM and places them, through libkeel's C ABI (cgo).
//
// Every failing call returns an *Error carrying libkeel's status and message, which names the
// argument or config field; errors.Is(err, keel.ErrState) and friends test the kind. Objects
// wrap libkeel handles: Close frees them, a closed object returns ErrHandle instead of
// crashing, and a finalizer frees what a caller forgets.
//
//	cfg, _ := keel.NewConfig("vmlinux")
//	defer cfg.Close()
//	cfg.SetVcpus(2)
//	vm, _ := cfg.Build()
//	defer vm.Close()
//	vm.Start()
//	reason, _ := vm.Wait(30 * time.Second)
//
// cgo finds keel.h in capi/include and libkeel in target/capi of this repository (build it
// with `cargo build --profile capi -p keel-capi`); set CGO_CFLAGS/CGO_LDFLAGS for another
// location.
package keel

/*
#cgo CFLAGS: -I${SRCDIR}/../../capi/include
#cgo LDFLAGS: -L${SRCDIR}/../../target/capi -lkeel -Wl,-rpath,${SRCDIR}/../../target/capi
#include <stdlib.h>
#include "keel.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Error is a failed libkeel call.
type Error struct {
	Status  int
	Name    string
	Message string
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// Is matches errors of the same status, so errors.Is(err, keel.ErrState) works.
func (e *Error) Is(target error) bool {
	var other *Error
	return errors.As(target, &other) && other.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrNull          = &Error{Status: C.KEEL_ERR_NULL, Name: "KEEL_ERR_NULL"}
	ErrUTF8          = &Error{Status: C.KEEL_ERR_UTF8, Name: "KEEL_ERR_UTF8"}
	ErrHandle        = &Error{Status: C.KEEL_ERR_HANDLE, Name: "KEEL_ERR_HANDLE"}
	ErrInvalid       = &Error{Status: C.KEEL_ERR_INVALID, Name: "KEEL_ERR_INVALID"}
	ErrState         = &Error{Status: C.KEEL_ERR_STATE, Name: "KEEL_ERR_STATE"}
	ErrThread        = &Error{Status: C.KEEL_ERR_THREAD, Name: "KEEL_ERR_THREAD"}
	ErrTimeout       = &Error{Status: C.KEEL_ERR_TIMEOUT, Name: "KEEL_ERR_TIMEOUT"}
	ErrHost          = &Error{Status: C.KEEL_ERR_HOST, Name: "KEEL_ERR_HOST"}
	ErrUnschedulable = &Error{Status: C.KEEL_ERR_UNSCHEDULABLE, Name: "KEEL_ERR_UNSCHEDULABLE"}
	ErrConflict      = &Error{Status: C.KEEL_ERR_CONFLICT, Name: "KEEL_ERR_CONFLICT"}
	ErrInternal      = &Error{Status: C.KEEL_ERR_INTERNAL, Name: "KEEL_ERR_INTERNAL"}
)

// check turns a status into an error. The last error is thread-local in libkeel, so the
// goroutine must stay on its OS thread from the call until here (see call).
func check(status C.keel_status) error {
	if status == C.KEEL_OK {
		return nil
	}
	return &Error{
		Status:  int(status),
		Name:    C.GoString(C.keel_status_name(status)),
		Message: C.GoString(C.keel_last_error()),
	}
}

// call runs one libkeel call and reads its error on the same OS thread.
func call(f func() C.keel_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return check(f())
}

func cstring(s string) (*C.char, func()) {
	p := C.CString(s)
	return p, func() { C.free(unsafe.Pointer(p)) }
}

// readString calls a libkeel function that fills a caller's buffer. The text can grow between
// the sizing call and the filling one (counters move), so a short buffer is retried with the
// length libkeel reports.
func readString(f func(buf *C.char, n C.size_t, needed *C.size_t) C.keel_status) (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var needed C.size_t
	status := f(nil, 0, &needed)
	for {
		if status != C.KEEL_ERR_BUFFER {
			if err := check(status); err != nil {
				return "", err
			}
		}
		size := needed + 64
		buf := C.malloc(size)
		status = f((*C.char)(buf), size, &needed)
		if status == C.KEEL_OK {
			text := C.GoString((*C.char)(buf))
			C.free(buf)
			return text, nil
		}
		C.free(buf)
	}
}

// Version is libkeel's version.
func Version() string { return C.GoString(C.keel_version()) }

// LiveHandles counts the handles libkeel has issued and not freed (for leak checks).
func LiveHandles() uint64 { return uint64(C.keel_live_handles()) }

// handle is a libkeel handle freed once.
type handle struct {
	mu   sync.Mutex
	id   C.uint64_t
	free func(C.uint64_t) C.keel_status
}

func (h *handle) get() (C.uint64_t, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.id == 0 {
		return 0, &Error{Status: C.KEEL_ERR_HANDLE, Name: "KEEL_ERR_HANDLE", Message: "closed"}
	}
	return h.id, nil
}

func (h *handle) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.id == 0 {
		return nil
	}
	err := call(func() C.keel_status { return h.free(h.id) })
	if err == nil || errors.Is(err, ErrHandle) {
		h.id = 0
	}
	return err
}

func track(h *handle) {
	runtime.SetFinalizer(h, func(h *handle) { _ = h.close() })
}

// Config is a VM's configuration, checked field by field as it is set.
type Config struct{ h *handle }

// NewConfig starts a config for the kernel at path (1 vCPU, 128 MiB, serial to stdout).
func NewConfig(kernel string) (*Config, error) {
	k, free := cstring(kernel)
	defer free()
	var id C.keel_config_t
	if err := call(func() C.keel_status { return C.keel_config_new(k, &id) }); err != nil {
		return nil, err
	}
	h := &handle{id: id, free: func(id C.uint64_t) C.keel_status { return C.keel_config_free(id) }}
	track(h)
	return &Config{h}, nil
}

func (c *Config) do(f func(C.keel_config_t) C.keel_status) error {
	id, err := c.h.get()
	if err != nil {
		return err
	}
	return call(func() C.keel_status { return f(id) })
}

// Close frees the config.
func (c *Config) Close() error { return c.h.close() }

// SetVcpus sets the vCPU count.
func (c *Config) SetVcpus(n uint32) error {
	return c.do(func(id C.keel_config_t) C.keel_status { return C.keel_config_set_vcpus(id, C.uint32_t(n)) })
}

// SetSeccomp turns Keel's seccomp filters on the VM's threads on (the default) or off.
// Under the filters each vCPU and device thread may make only the system calls its job needs;
// turn them off to debug, or under tools that cannot run seccomp filters (valgrind).
func (c *Config) SetSeccomp(on bool) error {
	mode := C.int32_t(C.KEEL_SECCOMP_OFF)
	if on {
		mode = C.int32_t(C.KEEL_SECCOMP_ON)
	}
	return c.do(func(id C.keel_config_t) C.keel_status { return C.keel_config_set_seccomp(id, mode) })
}

// SetMemoryMiB sets guest memory.
func (c *Config) SetMemoryMiB(mib uint64) error {
	return c.do(func(id C.keel_config_t) C.keel_status { return C.keel_config_set_memory_mib(id, C.uint64_t(mib)) })
}

// SetCmdline sets the kernel command line.
func (c *Config) SetCmdline(cmdline string) error {
	s, free := cstring(cmdline)
	defer free()
	return c.do(func(id C.keel_config_t) C.keel_status { return C.keel_config_set_cmdline(id, s) })
}

// AddDisk adds a virtio-blk disk on a raw image.
func (c *Config) AddDisk(id, path string, readOnly, direct bool) error {
	i, freeID := cstring(id)
	defer freeID()
	p, freePath := cstring(path)
	defer freePath()
	return c.do(func(cfg C.keel_config_t) C.keel_status {
		return C.keel_config_add_disk(cfg, i, p, C.bool(readOnly), C.bool(direct))
	})
}

// SetRng adds a virtio-rng device.
func (c *Config) SetRng(id string) error {
	i, free := cstring(id)
	defer free()
	return c.do(func(cfg C.keel_config_t) C.keel_status { return C.keel_config_set_rng(cfg, i) })
}

// SetConsole sends serial output to f (Keel writes to a duplicate; the caller keeps f).
func (c *Config) SetConsole(f *os.File) error {
	fd := C.int(f.Fd())
	err := c.do(func(cfg C.keel_config_t) C.keel_status { return C.keel_config_set_console_fd(cfg, fd) })
	runtime.KeepAlive(f)
	return err
}

// Build builds the VM (not started).
func (c *Config) Build() (*VM, error) {
	var vm C.keel_vm_t
	if err := c.do(func(cfg C.keel_config_t) C.keel_status { return C.keel_vm_build(cfg, &vm) }); err != nil {
		return nil, err
	}
	h := &handle{id: vm, free: func(id C.uint64_t) C.keel_status { return C.keel_vm_free(id) }}
	track(h)
	return &VM{h}, nil
}

// State is a VM's lifecycle state.
type State int

// States.
const (
	Created State = C.KEEL_STATE_CREATED
	Running State = C.KEEL_STATE_RUNNING
	Paused  State = C.KEEL_STATE_PAUSED
	Exited  State = C.KEEL_STATE_EXITED
)

// ExitReason is why a VM stopped.
type ExitReason int

// Exit reasons.
const (
	Reset         ExitReason = C.KEEL_EXIT_RESET
	Shutdown      ExitReason = C.KEEL_EXIT_SHUTDOWN
	Stopped       ExitReason = C.KEEL_EXIT_STOPPED
	TripleFault   ExitReason = C.KEEL_EXIT_TRIPLE_FAULT
	InternalError ExitReason = C.KEEL_EXIT_INTERNAL_ERROR
	EntryFailed   ExitReason = C.KEEL_EXIT_ENTRY_FAILED
	Failed        ExitReason = C.KEEL_EXIT_FAILED
)

// VM is a built VM. Close stops it if it runs and frees it.
type VM struct{ h *handle }

func (v *VM) do(f func(C.keel_vm_t) C.keel_status) error {
	id, err := v.h.get()
	if err != nil {
		return err
	}
	return call(func() C.keel_status { return f(id) })
}

// Close stops and frees the VM.
func (v *VM) Close() error { return v.h.close() }

// Start starts the vCPUs.
func (v *VM) Start() error {
	return v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_start(id) })
}

// Pause parks every vCPU.
func (v *VM) Pause() error {
	return v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_pause(id) })
}

// Resume resumes a paused VM.
func (v *VM) Resume() error {
	return v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_resume(id) })
}

// Stop stops the VM now, without waiting.
func (v *VM) Stop() error {
	return v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_stop(id) })
}

// PowerButton presses the ACPI power button.
func (v *VM) PowerButton() error {
	return v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_power_button(id) })
}

// Wait waits up to timeout (negative: forever) for the VM to exit.
func (v *VM) Wait(timeout time.Duration) (ExitReason, error) {
	ms := C.uint64_t(C.KEEL_WAIT_FOREVER)
	if timeout >= 0 {
		ms = C.uint64_t(timeout.Milliseconds())
	}
	var reason C.int32_t
	err := v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_wait(id, ms, &reason) })
	return ExitReason(reason), err
}

// State reads the VM's state.
func (v *VM) State() (State, error) {
	var state C.int32_t
	err := v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_state(id, &state) })
	return State(state), err
}

// ExitReason reads why the VM exited (ErrState while it runs).
func (v *VM) ExitReason() (ExitReason, error) {
	var reason C.int32_t
	err := v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_exit_reason(id, &reason) })
	return ExitReason(reason), err
}

// Counters reads vCPU exits and per-device counters.
func (v *VM) Counters() (map[string]any, error) {
	id, err := v.h.get()
	if err != nil {
		return nil, err
	}
	text, err := readString(func(buf *C.char, n C.size_t, needed *C.size_t) C.keel_status {
		return C.keel_vm_counters_json(id, buf, n, needed)
	})
	if err != nil {
		return nil, err
	}
	var counters map[string]any
	return counters, json.Unmarshal([]byte(text), &counters)
}

// StateFile returns a descriptor that turns readable on each state change (an eventfd; read
// 8 bytes to reset it). The caller closes it.
func (v *VM) StateFile() (*os.File, error) {
	var fd C.int
	if err := v.do(func(id C.keel_vm_t) C.keel_status { return C.keel_vm_state_fd(id, &fd) }); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "keel-state"), nil
}

// Cluster is a cluster description.
type Cluster struct{ h *handle }

// LoadCluster parses a cluster description in JSON (yaml=false) or YAML.
func LoadCluster(text string, yaml bool) (*Cluster, error) {
	t, free := cstring(text)
	defer free()
	format := C.int32_t(C.KEEL_FORMAT_JSON)
	if yaml {
		format = C.KEEL_FORMAT_YAML
	}
	var id C.keel_cluster_t
	if err := call(func() C.keel_status { return C.keel_cluster_load(t, format, &id) }); err != nil {
		return nil, err
	}
	h := &handle{id: id, free: func(id C.uint64_t) C.keel_status { return C.keel_cluster_free(id) }}
	track(h)
	return &Cluster{h}, nil
}

// Close frees the cluster.
func (c *Cluster) Close() error { return c.h.close() }

// Placer holds a cluster's allocations and a decider.
type Placer struct{ h *handle }

// NewPlacer makes a placer over cluster with policy ("spread", "pack", ...).
func NewPlacer(c *Cluster, policy string, seed uint64) (*Placer, error) {
	cluster, err := c.h.get()
	if err != nil {
		return nil, err
	}
	p, free := cstring(policy)
	defer free()
	var id C.keel_placer_t
	if err := call(func() C.keel_status { return C.keel_placer_new(cluster, p, C.uint64_t(seed), &id) }); err != nil {
		return nil, err
	}
	h := &handle{id: id, free: func(id C.uint64_t) C.keel_status { return C.keel_placer_free(id) }}
	track(h)
	return &Placer{h}, nil
}

// Close frees the placer.
func (p *Placer) Close() error { return p.h.close() }

// Placement is where a request went.
type Placement struct {
	Consumer  string `json:"consumer"`
	Host      string `json:"host"`
	Resources []struct {
		Provider string `json:"provider"`
		Class    string `json:"class"`
		Amount   int64  `json:"amount"`
	} `json:"resources"`
}

// Place decides where request (a PlacementRequest as JSON-able data) goes and commits it.
// An *Error matching ErrUnschedulable is returned when nothing fits; Explain says why.
func (p *Placer) Place(request any) (*Placement, error) {
	placer, err := p.h.get()
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(request)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	r, free := cstring(string(body))
	defer free()
	var claim C.keel_claim_t
	if err := call(func() C.keel_status { return C.keel_placer_decide(placer, r, &claim) }); err != nil {
		return nil, err
	}
	defer call(func() C.keel_status { return C.keel_claim_free(claim) })
	text, err := readString(func(buf *C.char, n C.size_t, needed *C.size_t) C.keel_status {
		return C.keel_claim_placement(claim, buf, n, needed)
	})
	if err != nil {
		return nil, err
	}
	if err := call(func() C.keel_status { return C.keel_claim_commit(claim) }); err != nil {
		return nil, err
	}
	var placement Placement
	return &placement, json.Unmarshal([]byte(text), &placement)
}

// Explain returns the explanation of the last rejection (its "summary" says it in a line).
func (p *Placer) Explain() (map[string]any, error) {
	placer, err := p.h.get()
	if err != nil {
		return nil, err
	}
	text, err := readString(func(buf *C.char, n C.size_t, needed *C.size_t) C.keel_status {
		return C.keel_placer_explain(placer, buf, n, needed)
	})
	if err != nil {
		return nil, err
	}
	var explanation map[string]any
	return explanation, json.Unmarshal([]byte(text), &explanation)
}

// Release frees the committed allocation of consumer.
func (p *Placer) Release(consumer string) error {
	placer, err := p.h.get()
	if err != nil {
		return err
	}
	c, free := cstring(consumer)
	defer free()
	return call(func() C.keel_status { return C.keel_placer_release(placer, c) })
}
