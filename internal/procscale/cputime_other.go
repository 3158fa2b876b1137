//go:build !unix

package procscale

// processCPU is not measured here: the controller keeps Go's default.
func processCPU() (seconds float64, ok bool) { return 0, false }
