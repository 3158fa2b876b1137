package connector

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Refusal messages for command bodies speak the protocol's words: a field is
// named by its JSON path as the requester wrote it (strategy.target_profit_pct,
// watch_wallets[2].wallet) and a type by its JSON kind (number, integer ≥ 0,
// string, boolean, object, array), never by a Go type or struct name.

// pathSeg is one step of a JSON path: an object key or an array index.
type pathSeg struct {
	key   string
	index int // used when isIdx
	isIdx bool
}

// formatPath renders a path as key.key[2].key; a key that is not a plain
// identifier is written ["as quoted"].
func formatPath(p []pathSeg) string {
	var b strings.Builder
	for i, s := range p {
		switch {
		case s.isIdx:
			fmt.Fprintf(&b, "[%d]", s.index)
		case plainKey(s.key):
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.key)
		default:
			b.WriteString("[" + strconv.Quote(s.key) + "]")
		}
	}
	return b.String()
}

func plainKey(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// inPath is " in <path>" for a non-empty path.
func inPath(p []pathSeg) string {
	if len(p) == 0 {
		return ""
	}
	return " in " + formatPath(p)
}

// walkEvent is one step of walkJSON.
type walkEvent struct {
	// path leads to the value (or, for a key, to the member it names). It is
	// reused by the walk: copy it to keep it.
	path []pathSeg
	// isKey: the token is an object key; valueEnd: a whole value (member or
	// element) ended at end (token is then its closing delimiter, or nil
	// after a literal); otherwise a value began with this token.
	isKey, valueEnd bool
	token           json.Token
	// before and end are the offsets around the token (end is just after it).
	before, end int64
	// closers closes every container still open, innermost first.
	closers func() string
}

// errStopWalk ends walkJSON early without error.
var errStopWalk = errors.New("stop")

// walkJSON visits the tokens of a valid JSON document in order, with their
// paths. visit returns errStopWalk to stop.
func walkJSON(doc []byte, visit func(*walkEvent) error) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber() // numbers as written: 1e400 is valid JSON, yet no float64
	type level struct {
		object  bool
		wantKey bool
		next    int // next array index
	}
	var (
		stack []*level
		path  []pathSeg
	)
	closers := func() string {
		var b strings.Builder
		for i := len(stack) - 1; i >= 0; i-- {
			if stack[i].object {
				b.WriteByte('}')
			} else {
				b.WriteByte(']')
			}
		}
		return b.String()
	}
	ev := &walkEvent{closers: closers}
	// ended reports that the value at the current path is complete.
	ended := func(closer json.Token, end int64) error {
		if len(stack) == 0 {
			return nil
		}
		ev.path, ev.isKey, ev.valueEnd, ev.token, ev.before, ev.end = path, false, true, closer, end, end
		err := visit(ev)
		path = path[:len(path)-1]
		if top := stack[len(stack)-1]; top.object {
			top.wantKey = true
		}
		return err
	}
	for {
		before := dec.InputOffset()
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		end := dec.InputOffset()
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if err := ended(d, end); err != nil {
				return err
			}
			continue
		}
		if top != nil && top.object && top.wantKey {
			path = append(path, pathSeg{key: tok.(string)})
			top.wantKey = false
			ev.path, ev.isKey, ev.valueEnd, ev.token, ev.before, ev.end = path, true, false, tok, before, end
			if err := visit(ev); err != nil {
				return err
			}
			continue
		}
		if top != nil && !top.object {
			path = append(path, pathSeg{index: top.next, isIdx: true})
			top.next++
		}
		ev.path, ev.isKey, ev.valueEnd, ev.token, ev.before, ev.end = path, false, false, tok, before, end
		if err := visit(ev); err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &level{object: true, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &level{})
		default:
			if err := ended(nil, end); err != nil {
				return err
			}
		}
	}
}

// duplicateKeyRefusal finds a key repeated (ignoring case, as the decoder
// matches keys to fields) within one object of a valid JSON document.
func duplicateKeyRefusal(doc []byte) *CommandError {
	var (
		seen    []map[string]string // per open container: folded key -> key as written (nil for arrays)
		refusal *CommandError
	)
	_ = walkJSON(doc, func(ev *walkEvent) error {
		switch {
		case ev.isKey:
			k := ev.token.(string)
			keys := seen[len(seen)-1]
			if first, dup := keys[foldKey(k)]; dup {
				where := inPath(ev.path[:len(ev.path)-1])
				if first == k {
					refusal = Refuse(CodeInvalidJSON, "%q appears twice%s", k, where)
				} else {
					refusal = Refuse(CodeInvalidJSON, "%q repeats %q%s (keys are matched without regard to case)", k, first, where)
				}
				return errStopWalk
			}
			keys[foldKey(k)] = k
		case ev.valueEnd:
			if ev.token != nil { // a nested container closed
				seen = seen[:len(seen)-1]
			}
		case ev.token == json.Delim('{'):
			seen = append(seen, map[string]string{})
		case ev.token == json.Delim('['):
			seen = append(seen, nil)
		}
		return nil
	})
	return refusal
}

// syntaxRefusal explains why body (lead bytes of white space trimmed from
// the request's start) is not one JSON object, or returns nil.
func syntaxRefusal(body []byte, lead int) *CommandError {
	var raw json.RawMessage
	err := json.Unmarshal(body, &raw)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		msg := se.Error()                 // the scanner's plain words, for example "invalid character 'x' after object key"
		at := int64(lead) + se.Offset - 1 // the offending byte, counted from 0
		switch {
		case strings.Contains(msg, "end of JSON input"):
			return Refuse(CodeInvalidJSON, "body is not valid JSON: it ends after %d bytes, before the JSON value is complete", int64(lead)+int64(len(body)))
		case strings.HasSuffix(msg, "after top-level value"):
			return Refuse(CodeInvalidJSON, "body must be one JSON object, but more data follows it at byte offset %d", at)
		default:
			return Refuse(CodeInvalidJSON, "body is not valid JSON: %s at byte offset %d", msg, at)
		}
	}
	if err != nil {
		return Refuse(CodeInvalidJSON, "body is not valid JSON")
	}
	if body[0] != '{' {
		return Refuse(CodeInvalidJSON, "body must be one JSON object, not %s", literalWords(body[0]))
	}
	if !utf8.Valid(body) {
		return Refuse(CodeInvalidJSON, "body is not valid UTF-8 (first invalid byte at offset %d)", lead+invalidUTF8At(body))
	}
	return nil
}

func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// literalWords names the JSON kind of a value starting with c.
func literalWords(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// valueWords names the JSON kind in an UnmarshalTypeError's Value.
func valueWords(v string) string {
	switch {
	case v == "bool":
		return "a boolean"
	case v == "string":
		return "a string"
	case v == "array":
		return "an array"
	case v == "object":
		return "an object"
	case v == "null":
		return "null"
	case strings.HasPrefix(v, "number"):
		return "a number"
	}
	return "a different kind of value"
}

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
)

// typeWords names, in JSON words, what a value of Go type t must be.
func typeWords(t reflect.Type) string {
	if t == nil {
		return "a different kind of value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pt := reflect.PointerTo(t)
	if !pt.Implements(jsonUnmarshalerType) && pt.Implements(textUnmarshalerType) {
		return "a string"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if t.Bits() < 64 {
			return intRangeWords(t)
		}
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if t.Bits() < 64 {
			return intRangeWords(t)
		}
		return "an integer ≥ 0"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	case reflect.Array:
		return "an array"
	}
	return "a different kind of value"
}

// intRangeWords is "an integer from <min> to <max>" for an integer type.
func intRangeWords(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		bits := t.Bits()
		return fmt.Sprintf("an integer from %d to %d", int64(-1)<<(bits-1), int64(uint64(1)<<(bits-1)-1))
	}
	return fmt.Sprintf("an integer from 0 to %d", uint64(math.MaxUint64)>>(64-t.Bits()))
}

// numberRefusal explains why a number literal does not fit t.
func numberRefusal(subject, lit string, t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return fmt.Sprintf("%s cannot take the number %s", subject, lit)
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		unsigned := t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr
		if strings.ContainsAny(lit, ".eE") {
			return fmt.Sprintf("%s must be %s written without fraction or exponent, not %s", subject, typeWords(t), lit)
		}
		if unsigned && strings.HasPrefix(lit, "-") && t.Bits() == 64 {
			return fmt.Sprintf("%s must be %s, not %s", subject, typeWords(t), lit)
		}
		return fmt.Sprintf("%s must be %s, not %s", subject, intRangeWords(t), lit)
	case reflect.Float32:
		return fmt.Sprintf("%s must be a number of magnitude at most %g, not %s", subject, float32(math.MaxFloat32), lit)
	case reflect.Float64, reflect.Interface:
		return fmt.Sprintf("%s must be a number of magnitude at most %g, not %s", subject, math.MaxFloat64, lit)
	}
	return fmt.Sprintf("%s must be %s, not a number", subject, typeWords(t))
}

// decodeRefusal translates an error of encoding/json's decoding of body
// (trimmed, valid JSON) into v into a refusal in the protocol's words.
func decodeRefusal(body []byte, v any, err error) error {
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce // a field's own UnmarshalJSON refused in its words
	}
	var ie *json.InvalidUnmarshalError
	if errors.As(err, &ie) {
		return fmt.Errorf("decode command body: %w", err) // a programming error, not the request's
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		subject, key := typeErrorSubject(body, te)
		if key {
			return Refuse(CodeInvalidJSON, "%s must be %s", subject, typeWords(te.Type))
		}
		if lit, ok := strings.CutPrefix(te.Value, "number "); ok {
			return Refuse(CodeInvalidJSON, "%s", numberRefusal(subject, lit, te.Type))
		}
		return Refuse(CodeInvalidJSON, "%s must be %s, not %s", subject, typeWords(te.Type), valueWords(te.Value))
	}
	if quoted, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name, uerr := strconv.Unquote(quoted)
		if uerr != nil {
			return Refuse(CodeInvalidJSON, "body has an unknown field")
		}
		if where, found := unknownFieldPath(body, v, name); found {
			return Refuse(CodeInvalidJSON, "unknown field %q%s", name, inPath(where))
		}
		return Refuse(CodeInvalidJSON, "unknown field %q", name)
	}
	return Refuse(CodeInvalidJSON, "body does not match the command")
}

// typeErrorSubject names the value of a type error: its path as written,
// found from the error's offset (checked against the decoder's field path),
// else the decoder's field path. For a map key that does not fit the map's
// key type it is "key "k" in path", and key is true.
func typeErrorSubject(body []byte, te *json.UnmarshalTypeError) (subject string, key bool) {
	var (
		found, near []pathSeg
		foundKey    bool
		ok, nearOK  bool
	)
	_ = walkJSON(body, func(ev *walkEvent) error {
		switch {
		case ev.valueEnd:
		case ev.isKey:
			if te.Offset > ev.before && te.Offset <= ev.end {
				found, foundKey, ok = append([]pathSeg(nil), ev.path...), true, true
				return errStopWalk
			}
		case ev.end == te.Offset:
			found, ok = append([]pathSeg(nil), ev.path...), true
			return errStopWalk
		case ev.end+1 == te.Offset && !nearOK:
			// a number too large even for an untyped value is reported one
			// byte after its end
			near, nearOK = append([]pathSeg(nil), ev.path...), true
		}
		return nil
	})
	if !ok && nearOK {
		found, ok = near, true
	}
	if ok && fieldsMatch(te.Field, found) {
		switch {
		case foundKey:
			return fmt.Sprintf("key %q%s", found[len(found)-1].key, inPath(found[:len(found)-1])), true
		case len(found) == 0:
			return "the body", false
		}
		return formatPath(found), false
	}
	if te.Field != "" {
		return te.Field, false
	}
	return "a value", false
}

// fieldsMatch reports whether the decoder's dotted field path (declared
// names, no indices or map keys) is a subsequence of the keys of path, as the
// decoder matches them (without regard to case).
func fieldsMatch(field string, path []pathSeg) bool {
	if field == "" {
		return true
	}
	names := strings.Split(field, ".")
	i := 0
	for _, s := range path {
		if i < len(names) && !s.isIdx && foldKey(s.key) == foldKey(names[i]) {
			i++
		}
	}
	return i == len(names)
}

// unknownFieldPath finds where the unknown field name the decoder reported
// is: of the members so named, the first (in document order, as the decoder
// reports the first error) whose prefix of the document, closed, already
// fails with that error. It returns the path of the object holding it.
func unknownFieldPath(body []byte, v any, name string) ([]pathSeg, bool) {
	count := 0
	_ = walkJSON(body, func(ev *walkEvent) error {
		if isMember(ev, name) {
			count++
		}
		return nil
	})
	if count == 1 {
		_, object := nthMember(body, name, 0)
		return object, true
	}
	rt := reflect.TypeOf(v)
	if count == 0 || rt == nil || rt.Kind() != reflect.Pointer {
		return nil, false
	}
	want := fmt.Sprintf("json: unknown field %q", name)
	fails := func(i int) bool {
		prefix, _ := nthMember(body, name, i)
		dec := json.NewDecoder(bytes.NewReader(prefix))
		dec.DisallowUnknownFields()
		err := dec.Decode(reflect.New(rt.Elem()).Interface())
		return err != nil && err.Error() == want
	}
	lo, hi := 0, count-1
	if !fails(hi) {
		return nil, false
	}
	for lo < hi { // the first member whose prefix fails (O(log count) decodes)
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	_, object := nthMember(body, name, lo)
	return object, true
}

// isMember reports that ev ends the value of an object member named name.
func isMember(ev *walkEvent, name string) bool {
	if !ev.valueEnd || len(ev.path) == 0 {
		return false
	}
	last := ev.path[len(ev.path)-1]
	return !last.isIdx && last.key == name
}

// nthMember returns, for the n-th (from 0) object member named name, the
// document cut just after its value and closed, and the path of its object.
func nthMember(body []byte, name string, n int) (prefix []byte, object []pathSeg) {
	_ = walkJSON(body, func(ev *walkEvent) error {
		if !isMember(ev, name) {
			return nil
		}
		if n > 0 {
			n--
			return nil
		}
		prefix = append(append([]byte(nil), body[:ev.end]...), ev.closers()...)
		object = append([]pathSeg(nil), ev.path[:len(ev.path)-1]...)
		return errStopWalk
	})
	return prefix, object
}
