package lasersell

import (
	"encoding/json"
	"strings"
	"testing"
)

// The one-pass scanner must agree with encoding/json on what is valid JSON.
func TestScanValueAgreesWithEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`0`, `-0`, `01`, `-`, `1.`, `1.5`, `.5`, `1e5`, `1E+5`, `1e`, `1e-`, `-1.25e-10`, `+1`,
		`true`, `tru`, `truex`, `false`, `null`, `nul`, `""`, `"a\"b"`, `"\u00e9"`, `"\u00g9"`, `"\x"`,
		"\"tab\there\"", `"\/"`, `"unterminated`, `[]`, `[1,]`, `[,1]`, `[1 2]`, `{}`, `{"a":1,}`,
		`{"a" 1}`, `{a:1}`, `{"a":[1,{"b":null}]}`, `{"a":1}}`, `[[[]]]`, `[` + strings.Repeat("[", 10001) + `]`,
		"\"\xff\"", ` [ 1 , 2 ] `,
	} {
		end := scanValue([]byte(in), skipSpace([]byte(in), 0), 0)
		got := end >= 0 && skipSpace([]byte(in), end) == len(in)
		if want := json.Valid([]byte(in)); got != want {
			t.Errorf("%.40q: scanner says %v, encoding/json %v", in, got, want)
		}
	}
}
