package bench

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a benchmark ran, for its result file and the results page.
type Machine struct {
	Host      string `json:"host"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	GoVersion string `json:"go_version"`
	// Commit is the qvl commit (from the binary's build info, else `git` in the working
	// directory), with "-dirty" when the tree had uncommitted changes; "unknown" when neither says.
	Commit string `json:"commit"`
}

// DescribeMachine gathers a Machine for this process.
func DescribeMachine() Machine {
	host, _ := os.Hostname()
	return Machine{Host: host, OS: runtime.GOOS, Arch: runtime.GOARCH, CPU: cpuModel(), Cores: runtime.NumCPU(),
		GoVersion: runtime.Version(), Commit: commit()}
}

// Metadata returns the machine as result-file metadata fields.
func (m Machine) Metadata() map[string]string {
	return map[string]string{"host": m.Host, "os_arch": m.OS + "/" + m.Arch, "cpu": m.CPU,
		"cpu_cores": strconv.Itoa(m.Cores), "go_version": m.GoVersion, "commit": m.Commit}
}

// cpuModel reads the CPU's model name on Linux ("unknown" elsewhere).
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown " + runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown " + runtime.GOARCH
}

// commit finds the source revision of this binary or of the working directory.
func commit() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if dirty {
				rev += "-dirty"
			}
			return rev
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		rev += "-dirty"
	}
	return rev
}
