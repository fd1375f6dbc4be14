// Package main is the gateway's embedded decision engine: the pinned OPA's own SDK
// (github.com/open-policy-agent/opa/v1/sdk), built with -buildmode=c-shared and loaded into the
// gateway process (gateway/policy/embedded.py). It runs the same bundle, status and decision-log
// plugins as `opa run --server` with the same configuration document, so bundles are fetched
// and verified, decisions logged (with system.log.mask) and status reported exactly as by the
// sidecar; only the HTTP hop between the data plane and OPA is gone.
//
// The C ABI (all strings are JSON; every returned buffer is freed with opa_free):
//
//	opa_restrict(caps, len) -> NULL | error     keep only the builtins named in an `opa capabilities` document
//	opa_new(cfg, len, id, logpath) -> {"handle": n} | {"error": {...}}
//	opa_ready(h) -> 1 (a bundle has been activated) | 0 | -1 (unknown handle)
//	opa_decide(h, path, input, len, timeout_ms, &outlen) -> {"result"?, "decision_id"?} | {"error": {...}}
//	opa_stop(h, timeout_ms)
//	opa_free(p)
//
// Diagnostics: with OPA_EMBEDDED_CPUPROFILE=<file> in the environment, a Go CPU profile of the
// process runs from the first opa_new to opa_stop (`go tool pprof <library> <file>`).
//
// Errors carry OPA's SDK error codes (opa_undefined_error, ...) or one of ours
// (timeout, engine_panic, bad_handle, invalid_input, restrict_failed); a panic never crosses
// the ABI. Every returned buffer is NUL-terminated.
package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/sdk"
	"github.com/open-policy-agent/opa/v1/util"
)

type instance struct {
	opa   *sdk.OPA
	ready chan struct{}
	log   *os.File
}

var (
	mu         sync.RWMutex
	instances  = map[int64]*instance{}
	nextHandle atomic.Int64
	restricted atomic.Bool
)

type engineError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type decideOut struct {
	Result     any          `json:"result,omitempty"`
	DecisionID string       `json:"decision_id,omitempty"`
	Error      *engineError `json:"error,omitempty"`
}

func out(v any, outLen *C.int) *C.char {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(decideOut{Error: &engineError{"internal_error", "result is not JSON: " + err.Error()}})
	}
	if outLen != nil {
		*outLen = C.int(len(b))
	}
	return (*C.char)(C.CBytes(append(b, 0))) // NUL-terminated too: a C string as well as pointer + length
}

func fail(code, msg string, outLen *C.int) *C.char {
	return out(decideOut{Error: &engineError{code, msg}}, outLen)
}

func lookup(h C.longlong) *instance {
	mu.RLock()
	defer mu.RUnlock()
	return instances[int64(h)]
}

// opa_restrict keeps only the builtins a capabilities document lists, for every compiler
// created afterwards (bundle activation included): a bundle calling any other builtin fails to
// activate ("undefined function"), and the previous one keeps serving. Call it once, before
// opa_new; calling it again is refused.
//
//export opa_restrict
func opa_restrict(caps *C.char, capsLen C.int) (ret *C.char) {
	defer func() {
		if r := recover(); r != nil {
			ret = fail("engine_panic", fmt.Sprint(r), nil)
		}
	}()
	if !restricted.CompareAndSwap(false, true) {
		return fail("restrict_failed", "the builtins are already restricted", nil)
	}
	c, err := ast.LoadCapabilitiesJSON(bytes.NewReader(C.GoBytes(unsafe.Pointer(caps), capsLen)))
	if err != nil {
		return fail("restrict_failed", err.Error(), nil)
	}
	allowed := make(map[string]bool, len(c.Builtins))
	for _, b := range c.Builtins {
		allowed[b.Name] = true
	}
	kept := ast.Builtins[:0:0]
	for _, b := range ast.Builtins {
		if allowed[b.Name] {
			kept = append(kept, b)
		} else {
			delete(ast.BuiltinMap, b.Name)
		}
	}
	ast.Builtins = kept
	return nil
}

// opa_new starts an SDK instance from an OPA configuration document (the sidecar's) and returns
// at once; opa_ready tells when its bundle has been activated. OPA's own log (errors only) goes
// to logpath. The runtime document (opa.runtime()) carries the configuration only, never the
// gateway's environment.
//
//export opa_new
func opa_new(cfg *C.char, cfgLen C.int, id *C.char, logPath *C.char) (ret *C.char) {
	defer func() {
		if r := recover(); r != nil {
			ret = fail("engine_panic", fmt.Sprint(r), nil)
		}
	}()
	logFile, err := os.OpenFile(C.GoString(logPath), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail("opa_new", err.Error(), nil)
	}
	logger := logging.New()
	logger.SetOutput(logFile)
	logger.SetLevel(logging.Error)
	ready := make(chan struct{})
	noEnv := func(m *plugins.Manager) {
		m.Info = ast.ObjectTerm(ast.Item(ast.StringTerm("env"), ast.ObjectTerm()))
	}
	o, err := sdk.New(context.Background(), sdk.Options{
		Config:        bytes.NewReader(C.GoBytes(unsafe.Pointer(cfg), cfgLen)),
		ID:            C.GoString(id),
		Ready:         ready,
		Logger:        logger,
		ConsoleLogger: logger,
		ManagerOpts:   []func(*plugins.Manager){noEnv},
	})
	if err != nil {
		logFile.Close()
		return fail("opa_new", err.Error(), nil)
	}
	if path := os.Getenv("OPA_EMBEDDED_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.StartCPUProfile(f)
		}
	}
	h := nextHandle.Add(1)
	mu.Lock()
	instances[h] = &instance{opa: o, ready: ready, log: logFile}
	mu.Unlock()
	return out(map[string]int64{"handle": h}, nil)
}

// opa_ready reports, without blocking, whether the instance has activated its bundles.
//
//export opa_ready
func opa_ready(h C.longlong) C.int {
	i := lookup(h)
	if i == nil {
		return -1
	}
	select {
	case <-i.ready:
		return 1
	default:
		return 0
	}
}

// opa_decide evaluates data.<path> (e.g. gateway_runtime/main/call) for a JSON input given as
// pointer and length, within timeout_ms, and logs the decision like the Data API does.
//
//export opa_decide
func opa_decide(h C.longlong, path *C.char, input *C.char, inputLen C.int, timeoutMs C.int, outLen *C.int) (ret *C.char) {
	defer func() {
		if r := recover(); r != nil {
			ret = fail("engine_panic", fmt.Sprint(r), outLen)
		}
	}()
	i := lookup(h)
	if i == nil {
		return fail("bad_handle", "no such engine instance", outLen)
	}
	var in any
	raw := unsafe.Slice((*byte)(unsafe.Pointer(input)), int(inputLen))
	if err := util.UnmarshalJSON(raw, &in); err != nil { // numbers stay json.Number, as in OPA's server
		return fail("invalid_input", err.Error(), outLen)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutMs)*time.Millisecond)
	defer cancel()
	res, err := i.opa.Decision(ctx, sdk.DecisionOptions{Path: C.GoString(path), Input: in, Now: time.Now()})
	var o decideOut
	if res != nil {
		o.DecisionID = res.ID
	}
	if err != nil {
		var se *sdk.Error
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			o.Error = &engineError{"timeout", fmt.Sprintf("no decision within %d ms", int(timeoutMs))}
		} else if errors.As(err, &se) {
			o.Error = &engineError{se.Code, se.Message}
		} else {
			o.Error = &engineError{"internal_error", err.Error()}
		}
		return out(o, outLen)
	}
	o.Result = res.Result
	return out(o, outLen)
}

// opa_stop stops the instance, flushing its decision logs for up to timeout_ms.
//
//export opa_stop
func opa_stop(h C.longlong, timeoutMs C.int) {
	defer func() { _ = recover() }()
	mu.Lock()
	i := instances[int64(h)]
	delete(instances, int64(h))
	mu.Unlock()
	if i == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutMs)*time.Millisecond)
	defer cancel()
	i.opa.Stop(ctx)
	i.log.Close()
	if os.Getenv("OPA_EMBEDDED_CPUPROFILE") != "" {
		pprof.StopCPUProfile()
	}
}

//export opa_free
func opa_free(p unsafe.Pointer) { C.free(p) }

func main() {}
