package runnel

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// The Go garbage collector must not run inside cabi_realloc, the function
// the host calls to place arguments and import results in the plugin's
// memory: the component model forbids calling an import there, and the
// collector reads the wall clock (an import) when a cycle ends. wasmtime
// then traps the call ("cannot leave component instance"), which an
// allocation-heavy plugin hit on 15 of 300 events with 200 KB payloads.
// So automatic collection is off, and the SDK collects at the end of a
// call instead, where imports are allowed, once the heap has doubled since
// the last collection (GOGC=100's rule), from a floor of minHeap.
//
// Reading the heap's size costs about 4 µs of host CPU per call (the bench:
// 17.5 against 21.5-23 µs per event with a check on every call), so it is
// read every checkEvery calls, and after any call whose event carried a
// big payload (what the host lowers into memory is the bulk of a typical
// call's allocation). A plugin that allocates many MiB per call on small
// events may need a larger memory_mb.
const (
	minHeap    = 4 << 20
	checkEvery = 8
	bigPayload = 64 << 10
)

var (
	nextCollection uint64 = minHeap
	callsUnchecked        = 0
	heapSample            = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
)

func init() {
	debug.SetGCPercent(-1)
}

// heapBytes is the memory held by heap objects, garbage included.
func heapBytes() uint64 {
	metrics.Read(heapSample)
	return heapSample[0].Value.Uint64()
}

// collectIfGrown runs a collection when the heap has doubled since the
// last one. Called where imports are allowed: before a call returns, with
// the size of the call's payload.
func collectIfGrown(payload int) {
	callsUnchecked++
	if callsUnchecked < checkEvery && payload < bigPayload {
		return
	}
	callsUnchecked = 0
	if heapBytes() < nextCollection {
		return
	}
	runtime.GC()
	nextCollection = max(minHeap, 2*heapBytes())
}
