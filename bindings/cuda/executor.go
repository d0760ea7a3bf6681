package cuda

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by (*Device).Do after Close.
var ErrClosed = errors.New("cuda: device is closed")

// executor runs functions on one goroutine locked to one OS thread. It knows
// nothing of CUDA: Device gives it the context setup and teardown, and the
// tests give it fakes.
type executor struct {
	jobs chan *job
	quit chan struct{}
	done chan struct{}
	// dead is closed when the worker goroutine was ended by runtime.Goexit
	// inside a Do function (t.FailNow in a test, typically).
	dead chan struct{}
	// tid is the worker's OS thread id, written before start returns.
	tid int
	// stopped is set by the worker before its thread ends, so that a later
	// thread that the kernel gives the same id is not taken for the worker.
	stopped   atomic.Bool
	closeOnce sync.Once
	teardown  func() error
	closeErr  error
}

type job struct {
	fn       func() error
	err      error
	panicked bool
	panicVal any
	goexited bool
	done     chan struct{}
}

var jobPool = sync.Pool{New: func() any { return &job{done: make(chan struct{}, 1)} }}

// ErrDeviceThreadExited is returned by Do and Close once a function run by
// Do ended the device thread with runtime.Goexit (as t.FailNow does). The
// device cannot be used any more; open it again.
var ErrDeviceThreadExited = errors.New("cuda: the device thread exited (runtime.Goexit inside Device.Do)")

// errUnsupportedThreads is returned where this package cannot identify OS
// threads (anything but Linux), which Do needs to detect re-entrant calls.
var errUnsupportedThreads = errors.New("cuda: the device thread executor needs linux")

// startExecutor starts the worker, runs setup on it and returns once setup
// has finished. If setup fails, the worker exits (its locked thread with it)
// and the error is returned. teardown runs on the worker at Close.
func startExecutor(setup, teardown func() error) (*executor, error) {
	if threadID() == 0 {
		return nil, errUnsupportedThreads
	}
	e := &executor{
		jobs:     make(chan *job),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		dead:     make(chan struct{}),
		teardown: teardown,
	}
	ready := make(chan error, 1)
	go e.run(setup, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return e, nil
}

func (e *executor) run(setup func() error, ready chan<- error) {
	// Never unlocked: when this goroutine returns, the runtime ends the
	// thread, so no other goroutine inherits a thread with a CUDA context
	// bound to it.
	runtime.LockOSThread()
	e.tid = threadID()
	if setup != nil {
		if err := callSafely(setup); err != nil {
			e.stopped.Store(true)
			ready <- err
			return
		}
	}
	ready <- nil
	for {
		select {
		case j := <-e.jobs:
			e.runJob(j)
		case <-e.quit:
			if e.teardown != nil {
				e.closeErr = callSafely(e.teardown)
			}
			e.stopped.Store(true)
			close(e.done)
			return
		}
	}
}

// callSafely runs fn and turns a panic into an error, for setup and teardown
// that run on the worker with no caller to re-panic in.
func callSafely(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p}
		}
	}()
	return fn()
}

// PanicError reports a panic raised by device setup or teardown code.
type PanicError struct {
	// Value is the value passed to panic.
	Value any
}

// Error implements error.
func (p *PanicError) Error() string {
	return "cuda: panic on the device thread: " + errorString(p.Value)
}

func errorString(v any) string {
	switch x := v.(type) {
	case error:
		return x.Error()
	case string:
		return x
	default:
		return "non-error panic value"
	}
}

// runJob runs j.fn and always signals j.done: after a normal return, after
// a panic (recovered, handed to the caller) and after runtime.Goexit, which
// cannot be stopped: then the worker is marked dead before it goes.
func (e *executor) runJob(j *job) {
	finished := false
	defer func() {
		if finished {
			return
		}
		if p := recover(); p != nil {
			j.panicked, j.panicVal = true, p
		} else {
			j.goexited = true
			e.stopped.Store(true)
			close(e.dead)
		}
		j.done <- struct{}{}
	}()
	j.err = j.fn()
	finished = true
	j.done <- struct{}{}
}

// onWorker reports whether the caller runs on the worker's thread, which
// only the worker goroutine can (it holds the thread locked).
func (e *executor) onWorker() bool { return !e.stopped.Load() && threadID() == e.tid }

func (e *executor) do(fn func() error) error {
	if fn == nil {
		return errors.New("cuda: Do called with a nil function")
	}
	if e.onWorker() {
		return fn()
	}
	j := jobPool.Get().(*job)
	j.fn = fn
	select {
	case e.jobs <- j:
	case <-e.quit:
		j.fn = nil
		jobPool.Put(j)
		return ErrClosed
	case <-e.dead:
		j.fn = nil
		jobPool.Put(j)
		return ErrDeviceThreadExited
	}
	<-j.done
	err, panicked, pv, goexited := j.err, j.panicked, j.panicVal, j.goexited
	*j = job{done: j.done}
	jobPool.Put(j)
	switch {
	case panicked:
		// The caller's own function panicked: let the panic continue in the
		// caller's goroutine, as if fn had run there.
		panic(pv)
	case goexited:
		// Likewise for runtime.Goexit (t.FailNow from a test's Do function):
		// the caller's goroutine exits too.
		runtime.Goexit()
	}
	return err
}

func (e *executor) close() error {
	if e.onWorker() {
		return errors.New("cuda: Device.Close called from inside Device.Do")
	}
	e.closeOnce.Do(func() { close(e.quit) })
	select {
	case <-e.done:
		return e.closeErr
	case <-e.dead:
		return ErrDeviceThreadExited
	}
}
