package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

// The scanner must agree with encoding/json on what is valid JSON.
func TestValidAgreesWithEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`0`, `-0`, `01`, `-`, `1.`, `1.5`, `.5`, `1e5`, `1E+5`, `1e`, `1e-`, `-1.25e-10`, `+1`,
		`true`, `tru`, `truex`, `false`, `null`, `nul`, `""`, `"a\"b"`, `"\u00e9"`, `"\u00g9"`, `"\x"`,
		"\"tab\there\"", `"\/"`, `"unterminated`, `[]`, `[1,]`, `[,1]`, `[1 2]`, `{}`, `{"a":1,}`,
		`{"a" 1}`, `{a:1}`, `{"a":[1,{"b":null}]}`, `{"a":1}}`, `[[[]]]`, `[` + strings.Repeat("[", 10001) + `]`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		"\"\xff\"", ` [ 1 , 2 ] `,
	} {
		if got, want := Valid([]byte(in)), json.Valid([]byte(in)); got != want {
			t.Errorf("%.40q: scanner says %v, encoding/json %v", in, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, seed := range []string{`{"type":"data","result":{"a":[1,2.5e3,"x\u00e9"]}}`, `[1,]`, `"\x"`, `-01`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := Valid(data), json.Valid(data); got != want {
			t.Fatalf("%q: Valid %v, encoding/json %v", data, got, want)
		}
	})
}

var frame = []byte(`{"type":"pnl_update","position_id":12345,"profit_units":-1234567,"proceeds_units":98765432,"server_time_ms":1763780000123,"token_price_quote":0.000012345,"market_cap_quote":123456.789}`)

func BenchmarkValid(b *testing.B) {
	for b.Loop() {
		Valid(frame)
	}
}

func BenchmarkEncodingJSONValid(b *testing.B) {
	for b.Loop() {
		json.Valid(frame)
	}
}
