//go:build unix

package procscale

import "syscall"

// processCPU returns the CPU time (user and system) the process has used so
// far, all threads together.
func processCPU() (seconds float64, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return tv(ru.Utime) + tv(ru.Stime), true
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
