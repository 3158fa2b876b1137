package bench

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// resultLines are the benchmark's machine-readable figures: one
// "RESULT <name> <value>" line each (issue 12), so runs can be compared by a
// script instead of by reading tables.
type resultLines []resultLine

type resultLine struct {
	name  string
	value float64
}

// add records one figure; the name becomes one shell word: lower case, '_'
// for the separators the tables use.
func (r *resultLines) add(name string, v float64) {
	name = strings.NewReplacer("-", "_", "/", "_", " ", "_", ".", "_").Replace(name)
	*r = append(*r, resultLine{strings.ToLower(name), v})
}

// ratio adds num/den, or nothing when den is zero (a phase that did not run).
func (r *resultLines) ratio(name string, num, den float64) {
	if den != 0 {
		r.add(name, num/den)
	}
}

func (r resultLines) writeTo(w io.Writer) {
	for _, l := range r {
		prec := 3
		if l.value >= 1000 || l.value <= -1000 {
			prec = 0
		}
		fmt.Fprintf(w, "RESULT %s %s\n", l.name, strconv.FormatFloat(l.value, 'f', prec, 64))
	}
}
