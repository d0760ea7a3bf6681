package cuda

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeDevice returns a Device whose thread runs setup/teardown fakes instead
// of CUDA calls, to test the executor on machines without a GPU.
func fakeDevice(t *testing.T, setup, teardown func() error) *Device {
	t.Helper()
	ex, err := startExecutor(setup, teardown)
	if errors.Is(err, errUnsupportedThreads) {
		t.Skip(err.Error())
	}
	require.NoError(t, err)
	return &Device{exec: ex}
}

func TestDoRunsEverythingOnOneOtherThread(t *testing.T) {
	var setupTID int
	d := fakeDevice(t, func() error { setupTID = threadID(); return nil }, nil)
	defer d.Close()

	tids := map[int]bool{}
	for i := 0; i < 20; i++ {
		require.NoError(t, d.Do(func() error { tids[threadID()] = true; return nil }))
		runtime.Gosched()
	}
	require.Len(t, tids, 1, "every Do must run on the same OS thread")
	require.True(t, tids[setupTID], "Do runs on the thread setup ran on")

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	require.False(t, tids[threadID()], "the device thread is not the caller's")
}

func TestDoReturnsTheFunctionsError(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	defer d.Close()
	sentinel := errors.New("kernel said no")
	require.ErrorIs(t, d.Do(func() error { return sentinel }), sentinel)
	require.NoError(t, d.Do(func() error { return nil }))
	require.Error(t, d.Do(nil))
}

func TestDoIsReentrant(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	defer d.Close()
	done := make(chan error, 1)
	go func() {
		done <- d.Do(func() error {
			outer := threadID()
			return d.Do(func() error {
				if threadID() != outer {
					return errors.New("nested Do left the device thread")
				}
				return d.Do(func() error { return nil })
			})
		})
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("nested Do deadlocked")
	}
}

func TestDoSerialisesConcurrentCallers(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	defer d.Close()
	const goroutines, calls = 8, 200
	counter := 0 // deliberately unsynchronised: only the device thread touches it
	var inside atomic.Int32
	var overlap atomic.Bool
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				err := d.Do(func() error {
					if inside.Add(1) != 1 {
						overlap.Store(true)
					}
					counter++
					inside.Add(-1)
					return nil
				})
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	require.False(t, overlap.Load(), "two Do functions ran at once")
	require.NoError(t, d.Do(func() error {
		if counter != goroutines*calls {
			return errors.New("lost updates")
		}
		return nil
	}))
}

func TestDoPanicContinuesInCaller(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	defer d.Close()
	require.PanicsWithValue(t, "boom", func() {
		_ = d.Do(func() error { panic("boom") })
	})
	// The device thread survives the panic.
	require.NoError(t, d.Do(func() error { return nil }))
}

func TestDoGoexitEndsCallerAndDevice(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	reachedAfterDo := false
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = d.Do(func() error { runtime.Goexit(); return nil })
		reachedAfterDo = true
	}()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("Do hung after its function called runtime.Goexit")
	}
	require.False(t, reachedAfterDo, "the caller's goroutine exits as if it had called Goexit itself")
	require.ErrorIs(t, d.Do(func() error { return nil }), ErrDeviceThreadExited)
	require.ErrorIs(t, d.Close(), ErrDeviceThreadExited)
}

func TestSetupFailureIsReturnedAndEndsThread(t *testing.T) {
	_, err := startExecutor(func() error { return errors.New("no context") }, nil)
	if errors.Is(err, errUnsupportedThreads) {
		t.Skip(err.Error())
	}
	require.EqualError(t, err, "no context")

	_, err = startExecutor(func() error { panic("setup exploded") }, nil)
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	require.Contains(t, err.Error(), "setup exploded")
}

func TestCloseRunsTeardownOnDeviceThreadOnce(t *testing.T) {
	var setupTID, teardownTID, teardowns int
	d := fakeDevice(t,
		func() error { setupTID = threadID(); return nil },
		func() error { teardownTID = threadID(); teardowns++; return errors.New("release failed") })
	require.EqualError(t, d.Close(), "release failed")
	require.EqualError(t, d.Close(), "release failed", "Close is idempotent and keeps its result")
	require.Equal(t, 1, teardowns)
	require.Equal(t, setupTID, teardownTID)
	require.ErrorIs(t, d.Do(func() error { return nil }), ErrClosed)
}

func TestCloseFromInsideDoIsRefused(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	defer d.Close()
	err := d.Do(func() error { return d.Close() })
	require.ErrorContains(t, err, "inside Device.Do")
	require.NoError(t, d.Do(func() error { return nil }), "the refused Close left the device open")
}

func TestCloseWaitsForRunningDo(t *testing.T) {
	d := fakeDevice(t, nil, nil)
	started := make(chan struct{})
	var finished atomic.Bool
	go func() {
		_ = d.Do(func() error {
			close(started)
			time.Sleep(50 * time.Millisecond)
			finished.Store(true)
			return nil
		})
	}()
	<-started
	require.NoError(t, d.Close())
	require.True(t, finished.Load(), "Close returned before the running Do finished")
}

func BenchmarkDo(b *testing.B) {
	ex, err := startExecutor(nil, nil)
	if err != nil {
		b.Skip(err.Error())
	}
	d := &Device{exec: ex}
	defer d.Close()
	fn := func() error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		_ = d.Do(fn)
	}
}
