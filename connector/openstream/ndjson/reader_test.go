package ndjson

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// chunkReader returns data in reads of the given sizes (cycled), to exercise lines split across
// reads and several lines per read.
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = c.sizes[c.i%len(c.sizes)]
		c.i++
		if n <= 0 {
			n = 1
		}
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// event is one outcome of Next, in a comparable form.
type event struct {
	kind string // "line", "long", "partial", "eof"
	data string
}

func (e event) String() string { return fmt.Sprintf("%s(%q)", e.kind, e.data) }

// collect drains the reader into events, checking the error contracts on the way.
func collect(t testing.TB, r *Reader, max int) []event {
	t.Helper()
	var out []event
	for i := 0; ; i++ {
		if i > 1<<20 {
			t.Fatal("reader does not terminate")
		}
		line, err := r.Next()
		var tl *LineTooLongError
		var pl *PartialLineError
		switch {
		case err == nil:
			if len(line) == 0 || len(line) > max || bytes.IndexByte(line, '\n') >= 0 {
				t.Fatalf("bad line %q", line)
			}
			out = append(out, event{"line", string(line)})
		case errors.As(err, &tl):
			if !errors.Is(err, ErrLineTooLong) || tl.Len <= max || len(tl.Prefix) > prefixLen {
				t.Fatalf("bad LineTooLongError %+v (max %d)", tl, max)
			}
			out = append(out, event{"long", ""})
		case errors.As(err, &pl):
			if !errors.Is(err, ErrPartialLine) {
				t.Fatal("PartialLineError does not match ErrPartialLine")
			}
			out = append(out, event{"partial", string(pl.Line)})
		case err == io.EOF:
			return append(out, event{"eof", ""})
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
}

// model is the reference splitter the Reader must agree with.
func model(data []byte, max int) []event {
	var out []event
	segs := bytes.Split(data, []byte("\n"))
	for _, s := range segs[:len(segs)-1] {
		if len(s) > max {
			out = append(out, event{"long", ""})
			continue
		}
		s = bytes.TrimSuffix(s, []byte("\r"))
		if len(s) > 0 {
			out = append(out, event{"line", string(s)})
		}
	}
	if last := segs[len(segs)-1]; len(last) > max {
		out = append(out, event{"long", ""})
	} else if len(last) > 0 {
		out = append(out, event{"partial", string(last)})
	}
	return append(out, event{"eof", ""})
}

func TestReaderTable(t *testing.T) {
	long := strings.Repeat("x", 100)
	tests := []struct {
		name  string
		in    string
		max   int
		sizes []int
		want  []event
	}{
		{"one line", "{\"a\":1}\n", 0, nil, []event{{"line", `{"a":1}`}, {"eof", ""}}},
		{"many lines per read", "a\nb\nc\n", 0, nil,
			[]event{{"line", "a"}, {"line", "b"}, {"line", "c"}, {"eof", ""}}},
		{"partial lines across reads", "hello\nworld\n", 0, []int{1, 2, 3},
			[]event{{"line", "hello"}, {"line", "world"}, {"eof", ""}}},
		{"crlf", "a\r\nb\r\n", 0, nil, []event{{"line", "a"}, {"line", "b"}, {"eof", ""}}},
		{"only cr is empty", "\r\n\r\nx\n", 0, nil, []event{{"line", "x"}, {"eof", ""}}},
		{"inner cr kept", "a\rb\n", 0, nil, []event{{"line", "a\rb"}, {"eof", ""}}},
		{"empty lines skipped", "\n\n\na\n\nb\n\n", 0, nil,
			[]event{{"line", "a"}, {"line", "b"}, {"eof", ""}}},
		{"oversized then valid", long + "\n{\"ok\":1}\n", 10, nil,
			[]event{{"long", ""}, {"line", `{"ok":1}`}, {"eof", ""}}},
		{"oversized across reads then valid", long + "\nok\n", 10, []int{3},
			[]event{{"long", ""}, {"line", "ok"}, {"eof", ""}}},
		{"two oversized", long + "\n" + long + "\nz\n", 10, []int{7},
			[]event{{"long", ""}, {"long", ""}, {"line", "z"}, {"eof", ""}}},
		{"exactly max", "0123456789\n", 10, []int{4},
			[]event{{"line", "0123456789"}, {"eof", ""}}},
		{"max plus one", "0123456789a\nb\n", 10, []int{4},
			[]event{{"long", ""}, {"line", "b"}, {"eof", ""}}},
		{"cr counts toward max", "0123456789\r\n", 10, nil, []event{{"long", ""}, {"eof", ""}}},
		{"eof mid-line", "a\n{\"half\":", 0, []int{2},
			[]event{{"line", "a"}, {"partial", `{"half":`}, {"eof", ""}}},
		{"eof mid oversized line", "a\n" + long, 10, nil,
			[]event{{"line", "a"}, {"long", ""}, {"eof", ""}}},
		{"empty stream", "", 0, nil, []event{{"eof", ""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = DefaultMaxLine
			}
			got := collect(t, NewReader(&chunkReader{data: []byte(tc.in), sizes: tc.sizes}, tc.max), max)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got  %v\nwant %v", got, tc.want)
			}
			if m := model([]byte(tc.in), max); fmt.Sprint(m) != fmt.Sprint(tc.want) {
				t.Fatalf("model disagrees with table: %v", m)
			}
		})
	}
}

func TestReaderTooLongDetails(t *testing.T) {
	in := strings.Repeat("A", 200) + "\nnext\n"
	r := NewReader(strings.NewReader(in), 50)
	_, err := r.Next()
	var tl *LineTooLongError
	if !errors.As(err, &tl) {
		t.Fatalf("want LineTooLongError, got %v", err)
	}
	if tl.Len <= 50 || string(tl.Prefix) != strings.Repeat("A", 64)[:len(tl.Prefix)] || len(tl.Prefix) == 0 {
		t.Fatalf("bad error %+v", tl)
	}
	line, err := r.Next()
	if err != nil || string(line) != "next" {
		t.Fatalf("no resync: %q %v", line, err)
	}
}

func TestReaderTransportError(t *testing.T) {
	boom := errors.New("boom")
	r := NewReader(io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(boom)), 0)
	if line, err := r.Next(); err != nil || string(line) != "a" {
		t.Fatalf("got %q %v", line, err)
	}
	if _, err := r.Next(); !errors.Is(err, boom) {
		t.Fatalf("want transport error, got %v", err)
	}
}

func TestReaderDataWithEOF(t *testing.T) {
	// Readers may return data together with io.EOF.
	r := NewReader(iotest.DataErrReader(strings.NewReader("x\ny\n")), 0)
	got := collect(t, r, DefaultMaxLine)
	if fmt.Sprint(got) != fmt.Sprint([]event{{"line", "x"}, {"line", "y"}, {"eof", ""}}) {
		t.Fatal(got)
	}
}

func TestReaderOneByte(t *testing.T) {
	in := "{\"type\":\"data\"}\r\n\n" + strings.Repeat("z", 40) + "\nq\nrest"
	got := collect(t, NewReader(iotest.OneByteReader(strings.NewReader(in)), 30), 30)
	if want := model([]byte(in), 30); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestReaderReset(t *testing.T) {
	r := NewReader(strings.NewReader("a\npart"), 0)
	r.Next()
	r.Reset(strings.NewReader("b\n"))
	if line, err := r.Next(); err != nil || string(line) != "b" {
		t.Fatalf("got %q %v", line, err)
	}
}

// TestReaderNoAllocs pins the "no allocation per line" property.
func TestReaderNoAllocs(t *testing.T) {
	line := []byte(`{"type":"data","ts":1730000000000,"svc_dur_ms":0.42,"result":{"status":"ok"}}` + "\n")
	data := bytes.Repeat(line, 1000)
	src := bytes.NewReader(data)
	r := NewReader(src, 0)
	r.Next() // warm up the buffer
	allocs := testing.AllocsPerRun(10, func() {
		src.Reset(data)
		r.Reset(src)
		for {
			if _, err := r.Next(); err != nil {
				break
			}
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per 1000 lines", allocs)
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte("a\nb\r\n\n{\"x\":1}\npartial"), uint8(8), []byte{1, 3})
	f.Add([]byte(strings.Repeat("y", 300)+"\nok\n"), uint8(16), []byte{5})
	f.Add([]byte("\r\n\r\r\n\n"), uint8(1), []byte{})
	f.Fuzz(func(t *testing.T, data []byte, max uint8, sizes []byte) {
		m := int(max%64) + 1
		sz := make([]int, len(sizes))
		for i, s := range sizes {
			sz[i] = int(s%17) + 1
		}
		got := collect(t, NewReader(&chunkReader{data: data, sizes: sz}, m), m)
		if want := model(data, m); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("max %d sizes %v\ngot  %v\nwant %v", m, sz, got, want)
		}
	})
}

func BenchmarkReader(b *testing.B) {
	line := []byte(`{"type":"data","ts":1730000000000,"svc_dur_ms":0.224000,"result":{"_type":"JObject","position":[2.870257,92.870159,2.869597,2.86937,-87.129492,2.868506],"effort":[0.0,83.719222,92.270308,0.773519,-4.086226,0.336679],"velocity":[-0.0,-0.0,0.0,0.0,-0.0,0.0]}}` + "\n")
	data := bytes.Repeat(line, 1000)
	src := bytes.NewReader(data)
	r := NewReader(src, 0)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(data)
		r.Reset(src)
		for {
			if _, err := r.Next(); err != nil {
				break
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/line")
}

// scripted returns its steps one per Read: a string is data, an error is returned as is.
type scripted struct{ steps []any }

func (s *scripted) Read(p []byte) (int, error) {
	if len(s.steps) == 0 {
		return 0, io.EOF
	}
	st := s.steps[0]
	s.steps = s.steps[1:]
	if err, ok := st.(error); ok {
		return 0, err
	}
	return copy(p, st.(string)), nil
}

func TestReaderContinuesAfterTimeout(t *testing.T) {
	timeout := errors.New("i/o timeout")
	r := NewReader(&scripted{steps: []any{"x\nab", timeout, "c\n", timeout, "d"}}, 0)
	want := []string{"line x", "err i/o timeout", "line abc", "err i/o timeout", "partial d", "eof"}
	var got []string
	for len(got) < len(want) {
		line, err := r.Next()
		var pl *PartialLineError
		switch {
		case err == nil:
			got = append(got, "line "+string(line))
		case errors.As(err, &pl):
			got = append(got, "partial "+string(pl.Line))
		case err == io.EOF:
			got = append(got, "eof")
		default:
			got = append(got, "err "+err.Error())
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}
