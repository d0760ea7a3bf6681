package cuda

import (
	"errors"
	"fmt"
)

// Properties describes a device, read once by Open.
type Properties struct {
	// Ordinal is the device's index among the driver's devices.
	Ordinal int
	// Name is the marketing name, e.g. "NVIDIA H100 80GB HBM3".
	Name string
	// ComputeMajor and ComputeMinor are the compute capability (9.0 for H100).
	ComputeMajor, ComputeMinor int
	// Multiprocessors is the SM count.
	Multiprocessors int
	// TotalMemory is the device memory in bytes.
	TotalMemory uint64
	// MaxThreadsPerBlock is the largest block a kernel may be launched with.
	MaxThreadsPerBlock int
	// WarpSize is the warp width in threads.
	WarpSize int
	// SharedMemoryPerBlock is the default per-block shared memory limit.
	SharedMemoryPerBlock int
	// SharedMemoryPerBlockOptin is the per-block limit after
	// Function.SetMaxDynamicSharedMemory (227 KiB on H100).
	SharedMemoryPerBlockOptin int
	// SharedMemoryPerMultiprocessor is the shared memory of one SM.
	SharedMemoryPerMultiprocessor int
	// L2CacheBytes is the L2 cache size.
	L2CacheBytes int
	// MemoryClockKHz is the peak memory clock, 0 if the driver no longer
	// reports it (the attribute is deprecated in CUDA 13).
	MemoryClockKHz int
	// MemoryBusWidthBits is the memory bus width, 0 if not reported.
	MemoryBusWidthBits int
	// DriverVersion is the driver's CUDA version, 1000*major + 10*minor.
	DriverVersion int
}

// PeakMemoryBandwidth returns the theoretical DRAM bandwidth in bytes per
// second (two transfers per clock), or 0 when clock or bus width is unknown.
func (p Properties) PeakMemoryBandwidth() float64 {
	return 2 * float64(p.MemoryClockKHz) * 1e3 * float64(p.MemoryBusWidthBits) / 8
}

// String summarises p on one line.
func (p Properties) String() string {
	return fmt.Sprintf("cuda:%d %s (sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, smem/block opt-in %d KiB, driver CUDA %d.%d)",
		p.Ordinal, p.Name, p.ComputeMajor, p.ComputeMinor, p.Multiprocessors,
		float64(p.TotalMemory)/(1<<30), p.L2CacheBytes>>20, p.SharedMemoryPerBlockOptin>>10,
		p.DriverVersion/1000, (p.DriverVersion%1000)/10)
}

// readProperties queries everything in Properties; optional attributes that
// the driver refuses are left 0.
func readProperties(ordinal int, d Dev) (Properties, error) {
	p := Properties{Ordinal: ordinal}
	var err error
	if p.Name, err = d.Name(); err != nil {
		return p, err
	}
	if p.TotalMemory, err = d.TotalMem(); err != nil {
		return p, err
	}
	if p.DriverVersion, err = DriverVersion(); err != nil {
		return p, err
	}
	required := []struct {
		attr DeviceAttribute
		dst  *int
	}{
		{AttrComputeCapabilityMajor, &p.ComputeMajor},
		{AttrComputeCapabilityMinor, &p.ComputeMinor},
		{AttrMultiprocessorCount, &p.Multiprocessors},
		{AttrMaxThreadsPerBlock, &p.MaxThreadsPerBlock},
		{AttrWarpSize, &p.WarpSize},
		{AttrMaxSharedMemoryPerBlock, &p.SharedMemoryPerBlock},
		{AttrMaxSharedMemoryPerBlockOptin, &p.SharedMemoryPerBlockOptin},
		{AttrMaxSharedMemoryPerMultiprocessor, &p.SharedMemoryPerMultiprocessor},
		{AttrL2CacheSize, &p.L2CacheBytes},
	}
	for _, a := range required {
		if *a.dst, err = d.Attribute(a.attr); err != nil {
			return p, err
		}
	}
	if v, err := d.Attribute(AttrMemoryClockRate); err == nil {
		p.MemoryClockKHz = v
	}
	if v, err := d.Attribute(AttrGlobalMemoryBusWidth); err == nil {
		p.MemoryBusWidthBits = v
	}
	return p, nil
}

// Device is one GPU with its primary context bound to a dedicated OS thread.
// All driver work for the device runs on that thread through Do.
type Device struct {
	ordinal int
	dev     Dev
	ctx     Context
	props   Properties
	exec    *executor
}

// Open checks Available, then starts the device's thread, retains the
// primary context of device ordinal, makes it current there and reads the
// device's Properties. Close releases it.
func Open(ordinal int) (*Device, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	n, err := DeviceCount()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: device ordinal %d out of range: the driver reports %d device(s)", ordinal, n)
	}
	d := &Device{ordinal: ordinal}
	setup := func() error {
		dev, err := DeviceGet(ordinal)
		if err != nil {
			return err
		}
		ctx, err := dev.PrimaryCtxRetain()
		if err != nil {
			return err
		}
		if err := ctx.SetCurrent(); err != nil {
			_ = dev.PrimaryCtxRelease()
			return err
		}
		props, err := readProperties(ordinal, dev)
		if err != nil {
			_ = Context(0).SetCurrent()
			_ = dev.PrimaryCtxRelease()
			return err
		}
		d.dev, d.ctx, d.props = dev, ctx, props
		return nil
	}
	teardown := func() error {
		syncErr := CtxSynchronize()
		unbindErr := Context(0).SetCurrent()
		releaseErr := d.dev.PrimaryCtxRelease()
		return errors.Join(syncErr, unbindErr, releaseErr)
	}
	ex, err := startExecutor(setup, teardown)
	if err != nil {
		return nil, fmt.Errorf("cuda: open device %d: %w", ordinal, err)
	}
	d.exec = ex
	return d, nil
}

// Ordinal returns the device index given to Open.
func (d *Device) Ordinal() int { return d.ordinal }

// Dev returns the driver's device handle.
func (d *Device) Dev() Dev { return d.dev }

// Context returns the primary context bound to the device thread.
func (d *Device) Context() Context { return d.ctx }

// Properties returns what Open read about the device.
func (d *Device) Properties() Properties { return d.props }

// Do runs fn on the device thread, with the device's context current, and
// returns its error. It may be called from any goroutine; calls are run one
// at a time in arrival order. Called from inside fn (re-entrantly), it runs
// the nested function inline instead of deadlocking. If fn panics, the
// panic continues in the caller's goroutine. After Close, Do returns
// ErrClosed.
func (d *Device) Do(fn func() error) error { return d.exec.do(fn) }

// MemInfo returns the free and total device memory in bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	err = d.Do(func() error {
		var e error
		free, total, e = MemGetInfo()
		return e
	})
	return free, total, err
}

// Close waits for the running Do, synchronises the context, unbinds it,
// releases the primary context and ends the device thread. Resources the
// caller allocated should be freed first. Close is idempotent; it must not
// be called from inside Do.
func (d *Device) Close() error { return d.exec.close() }
