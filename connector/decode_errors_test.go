package connector

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// Named Go types, as the sources use: none of their names may reach a reply.
type (
	decodeMode     string
	decodeStrategy struct {
		TargetProfitPct float64  `json:"target_profit_pct"`
		StopLossPct     *float64 `json:"stop_loss_pct"`
		SlippageBps     uint16   `json:"slippage_bps"`
		Offset          int64    `json:"offset"`
		Small           int8     `json:"small"`
		Ratio           float32  `json:"ratio"`
	}
	decodeWatch struct {
		Wallet string `json:"wallet"`
		Auto   bool   `json:"auto"`
	}
	decodeBody struct {
		Wallets   []string              `json:"wallets"`
		Strategy  *decodeStrategy       `json:"strategy"`
		ID        *uint64               `json:"position_id"`
		Mode      decodeMode            `json:"mode"`
		Watch     []decodeWatch         `json:"watch_wallets"`
		Flags     map[string]bool       `json:"flags"`
		ByNumber  map[uint64]string     `json:"by_number"`
		Grid      [][]int32             `json:"grid"`
		Args      json.RawMessage       `json:"args"`
		Extra     map[string]decodeMode `json:"extra"`
		Anything  any                   `json:"anything"`
		Enabled   bool                  `json:"enabled"`
		Blob      []byte                `json:"blob"`
		Watchlist *[]decodeWatch        `json:"watchlist"`
	}
)

func decodeMessage(t *testing.T, body string) string {
	t.Helper()
	var v decodeBody
	err := DecodeStrict([]byte(body), &v)
	if err == nil {
		return ""
	}
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Code != CodeInvalidJSON {
		t.Fatalf("%s: got %v, want a %s refusal", body, err, CodeInvalidJSON)
	}
	return ce.Message
}

func TestDecodeStrictMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ body, want string }{
		// wrong JSON kinds, named by path as written
		{`{"strategy":{"target_profit_pct":"5"}}`, `strategy.target_profit_pct must be a number, not a string`},
		{`{"Strategy":{"Target_Profit_Pct":"5"}}`, `Strategy.Target_Profit_Pct must be a number, not a string`},
		{`{"strategy":{"stop_loss_pct":[1]}}`, `strategy.stop_loss_pct must be a number, not an array`},
		{`{"strategy":"x"}`, `strategy must be an object, not a string`},
		{`{"strategy":[1]}`, `strategy must be an object, not an array`},
		{`{"position_id":"1"}`, `position_id must be an integer ≥ 0, not a string`},
		{`{"position_id":true}`, `position_id must be an integer ≥ 0, not a boolean`},
		{`{"mode":5}`, `mode must be a string, not a number`},
		{`{"enabled":"yes"}`, `enabled must be a boolean, not a string`},
		{`{"wallets":"a"}`, `wallets must be an array, not a string`},
		{`{"watch_wallets":{}}`, `watch_wallets must be an array, not an object`},
		{`{"watchlist":{}}`, `watchlist must be an array, not an object`},
		{`{"flags":[]}`, `flags must be an object, not an array`},
		{`{"blob":5}`, `blob must be a base64 string, not a number`},
		// arrays: the index of the element, as the requester counts (from 0)
		{`{"wallets":["a",3]}`, `wallets[1] must be a string, not a number`},
		{`{"watch_wallets":[{"wallet":"a"},{"wallet":"b"},{"wallet":1}]}`, `watch_wallets[2].wallet must be a string, not a number`},
		{`{"watch_wallets":[{"wallet":"a"},{"auto":"no"}]}`, `watch_wallets[1].auto must be a boolean, not a string`},
		{`{"watchlist":[{"wallet":"a"},{"wallet":false}]}`, `watchlist[1].wallet must be a string, not a boolean`},
		{`{"grid":[[1,2],[3,"4"]]}`, `grid[1][1] must be an integer from -2147483648 to 2147483647, not a string`},
		// map members: the key as written, quoted when it is not plain
		{`{"flags":{"on":true,"off":1}}`, `flags.off must be a boolean, not a number`},
		{`{"flags":{"my key":1}}`, `flags["my key"] must be a boolean, not a number`},
		{`{"extra":{"a.b":{}}}`, `extra["a.b"] must be a string, not an object`},
		{`{"by_number":{"a":"b"}}`, `key "a" in by_number must be an integer ≥ 0`},
		// numbers that do not fit
		{`{"position_id":-1}`, `position_id must be an integer ≥ 0, not -1`},
		{`{"position_id":1.5}`, `position_id must be an integer ≥ 0 written without fraction or exponent, not 1.5`},
		{`{"position_id":1e3}`, `position_id must be an integer ≥ 0 written without fraction or exponent, not 1e3`},
		{`{"position_id":18446744073709551616}`, `position_id must be an integer from 0 to 18446744073709551615, not 18446744073709551616`},
		{`{"strategy":{"slippage_bps":70000}}`, `strategy.slippage_bps must be an integer from 0 to 65535, not 70000`},
		{`{"strategy":{"slippage_bps":-1}}`, `strategy.slippage_bps must be an integer from 0 to 65535, not -1`},
		{`{"strategy":{"offset":9223372036854775808}}`, `strategy.offset must be an integer from -9223372036854775808 to 9223372036854775807, not 9223372036854775808`},
		{`{"strategy":{"offset":0.5}}`, `strategy.offset must be an integer written without fraction or exponent, not 0.5`},
		{`{"strategy":{"small":128}}`, `strategy.small must be an integer from -128 to 127, not 128`},
		{`{"strategy":{"target_profit_pct":1e400}}`, `strategy.target_profit_pct must be a number of magnitude at most 1.7976931348623157e+308, not 1e400`},
		{`{"strategy":{"ratio":1e39}}`, `strategy.ratio must be a number of magnitude at most 3.4028235e+38, not 1e39`},
		{`{"anything":{"deep":[1e400]}}`, `anything.deep[0] must be a number of magnitude at most 1.7976931348623157e+308, not 1e400`},
		// unknown fields, with the path of the object holding them
		{`{"nope":1}`, `unknown field "nope"`},
		{`{"strategy":{"target_profit_pct":1,"nope":1}}`, `unknown field "nope" in strategy`},
		{`{"watch_wallets":[{"wallet":"a"},{"wallet":"b"},{"wallet":"c","nope":1}]}`, `unknown field "nope" in watch_wallets[2]`},
		{`{"watchlist":[{"wallet":"a","x":1}],"x":2}`, `unknown field "x" in watchlist[0]`},
		{`{"x":2,"watchlist":[{"wallet":"a","x":1}]}`, `unknown field "x"`},
		{`{"flags":{"x":true},"strategy":{"x":1}}`, `unknown field "x" in strategy`},
		{`{"my field":1}`, `unknown field "my field"`},
		// duplicate keys, also those differing only in letter case
		{`{"wallets":[],"wallets":[]}`, `"wallets" appears twice`},
		{`{"wallets":[],"Wallets":[]}`, `"Wallets" repeats "wallets" (keys are matched without regard to case)`},
		{`{"strategy":{"offset":1,"OFFSET":2}}`, `"OFFSET" repeats "offset" in strategy (keys are matched without regard to case)`},
		{`{"watch_wallets":[{"wallet":"a"},{"wallet":"a","Wallet":"b"}]}`, `"Wallet" repeats "wallet" in watch_wallets[1] (keys are matched without regard to case)`},
		{"{\"strategy\":{\"offset\":1,\"OFF\u017fET\":2}}", "\"OFF\u017fET\" repeats \"offset\" in strategy (keys are matched without regard to case)"},
		{`{"args":{"x":1e400},"mode":"a","mode":"b"}`, `"mode" appears twice`}, // a number no float64 holds does not hide a repeat
		// not one JSON object, with where
		{`{"wallets":`, `body is not valid JSON: it ends after 11 bytes, before the JSON value is complete`},
		{`  {"wallets":[1,}`, `body is not valid JSON: invalid character '}' looking for beginning of value at byte offset 16`},
		{`{"a" 1}`, `body is not valid JSON: invalid character '1' after object key at byte offset 5`},
		{`{"a":1} {"b":2}`, `body must be one JSON object, but more data follows it at byte offset 8`},
		{`[1]`, `body must be one JSON object, not an array`},
		{`"s"`, `body must be one JSON object, not a string`},
		{`12`, `body must be one JSON object, not a number`},
		{`null`, `body must be one JSON object, not null`},
		{"{\"mode\":\"\xff\"}", `body is not valid UTF-8 (first invalid byte at offset 9)`},
		// accepted
		{``, ``},
		{`{"strategy":{"target_profit_pct":1.5,"slippage_bps":65535},"position_id":18446744073709551615,"by_number":{"7":"x"}}`, ``},
	} {
		if got := decodeMessage(t, tc.body); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.body, got, tc.want)
		}
	}
}

// goWords must never appear in a refusal: they are the decoder's Go view
// of the body (types, struct names), not the protocol's.
var goWords = []string{"Go", "go ", "struct", "uint", "int8", "int16", "int32", "int64", "float32", "float64", "map[", "[]",
	"decodeBody", "decodeStrategy", "decodeWatch", "decodeMode", "RawMessage", "interface", "json:", "reflect", "*"}

func checkNoGoWords(t *testing.T, body, msg string) {
	t.Helper()
	for _, w := range goWords {
		if strings.Contains(msg, w) {
			t.Errorf("%q: refusal %q contains %q", body, msg, w)
		}
	}
}

// Mutations of valid bodies (wrong kinds, bad numbers, unknown, duplicate
// and case-variant keys, cuts and stray bytes) are refused in JSON words.
func TestDecodeStrictMessagesSpeakJSON(t *testing.T) {
	t.Parallel()
	seeds := []string{
		`{"wallets":["a","b"],"strategy":{"target_profit_pct":1,"stop_loss_pct":2,"slippage_bps":3,"offset":4,"small":5,"ratio":6},"position_id":7}`,
		`{"mode":"m","watch_wallets":[{"wallet":"a","auto":true},{"wallet":"b","auto":false}],"flags":{"f":true}}`,
		`{"by_number":{"1":"a"},"grid":[[1],[2,3]],"args":{"k":[1]},"extra":{"e":"v"},"anything":[1,"a",null],"enabled":true,"blob":"AAEC"}`,
		`{"watchlist":[{"wallet":"w"}],"strategy":null,"position_id":null}`,
	}
	replacements := []string{`"s"`, `0`, `-1`, `1.5`, `1e3`, `1e400`, `-1e400`, `99999999999999999999`, `true`, `null`,
		`[]`, `[1,"a"]`, `{}`, `{"zz":1}`, `{"wallet":1}`, `[[{"q":0}]]`}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 4000; i++ {
		body := []byte(seeds[rng.IntN(len(seeds))])
		for range 1 + rng.IntN(3) {
			body = mutateBody(rng, body, replacements)
		}
		var v decodeBody
		err := DecodeStrict(body, &v)
		if err == nil {
			continue
		}
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Code != CodeInvalidJSON {
			t.Fatalf("%q: got %v, want a %s refusal", body, err, CodeInvalidJSON)
		}
		checkNoGoWords(t, string(body), ce.Message)
	}
}

// mutateBody applies one random edit to a JSON body.
func mutateBody(rng *rand.Rand, body []byte, replacements []string) []byte {
	s := string(body)
	switch rng.IntN(6) {
	case 0, 1: // replace a value (after a colon or in an array) with another kind
		idx := indexesOf(s, ":")
		if len(idx) == 0 {
			return body
		}
		at := idx[rng.IntN(len(idx))] + 1
		end := valueEnd(s, at)
		return []byte(s[:at] + replacements[rng.IntN(len(replacements))] + s[end:])
	case 2: // add an unknown or duplicate key in some object
		idx := indexesOf(s, "{")
		if len(idx) == 0 {
			return body
		}
		at := idx[rng.IntN(len(idx))] + 1
		keys := []string{`"zz":1,`, `"wallets":[],`, `"Wallets":[],`, `"WALLET":"x",`, `"Offset":1,`, `"x y":2,`}
		if strings.HasPrefix(s[at:], "}") {
			return []byte(s[:at] + strings.TrimSuffix(keys[rng.IntN(len(keys))], ",") + s[at:])
		}
		return []byte(s[:at] + keys[rng.IntN(len(keys))] + s[at:])
	case 3: // flip the case of a key
		idx := indexesOf(s, `"`)
		if len(idx) == 0 {
			return body
		}
		at := idx[rng.IntN(len(idx))] + 1
		if at < len(s) && s[at] >= 'a' && s[at] <= 'z' {
			return []byte(s[:at] + strings.ToUpper(s[at:at+1]) + s[at+1:])
		}
		return body
	case 4: // cut
		return body[:rng.IntN(len(body)+1)]
	default: // a stray byte
		stray := []byte(`{}[],:" 0-.eX` + "\xff\x00\n")
		at := rng.IntN(len(body) + 1)
		return append(append(append([]byte(nil), body[:at]...), stray[rng.IntN(len(stray))]), body[at:]...)
	}
}

func indexesOf(s, sub string) []int {
	var out []int
	for i := 0; ; {
		j := strings.Index(s[i:], sub)
		if j < 0 {
			return out
		}
		out = append(out, i+j)
		i += j + 1
	}
}

// valueEnd finds the end of the (roughly) JSON value starting at s[at:].
func valueEnd(s string, at int) int {
	depth, inString := 0, false
	for i := at; i < len(s); i++ {
		c := s[i]
		switch {
		case inString:
			if c == '\\' {
				i++
			} else if c == '"' {
				inString = false
				if depth == 0 {
					return i + 1
				}
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case c == ',' && depth == 0:
			return i
		}
	}
	return len(s)
}

// FuzzDecodeStrictMessages: whatever the body, a refusal is invalid_json,
// in JSON words. The words are checked only for bodies that cannot put a Go
// word into the message themselves (a key is quoted back as written, and an
// escape could spell one); the refusal code is checked for every body.
func FuzzDecodeStrictMessages(f *testing.F) {
	for _, s := range []string{`{"strategy":{"target_profit_pct":"5"}}`, `{"position_id":-1}`, `{"watch_wallets":[{"x":1}]}`,
		`{"wallets":[],"Wallets":[]}`, `{"wallets":`, `[1]`, `{"by_number":{"a":"b"}}`, `{"grid":[[1e99]]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		quotesGoWords := strings.ContainsAny(string(body), `\`)
		for _, w := range goWords {
			quotesGoWords = quotesGoWords || strings.Contains(strings.ToLower(string(body)), strings.ToLower(w))
		}
		var v decodeBody
		err := DecodeStrict(body, &v)
		if err == nil {
			return
		}
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Code != CodeInvalidJSON {
			t.Fatalf("%q: got %v, want a %s refusal", body, err, CodeInvalidJSON)
		}
		if !quotesGoWords {
			checkNoGoWords(t, string(body), ce.Message)
		}
	})
}
