package replay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Record is one replayed message as written to NDJSON (see the package doc).
type Record struct {
	Stream  string              `json:"stream"`
	Subject string              `json:"subject"`
	Seq     uint64              `json:"seq"`
	Time    time.Time           `json:"time"`
	Headers map[string][]string `json:"headers"`
	// Data holds a valid UTF-8 payload as text; nil when DataBase64 is used.
	Data *string `json:"data,omitempty"`
	// DataBase64 holds a payload that is not valid UTF-8 (encoding/json writes
	// []byte as standard base64). JSON strings cannot carry invalid UTF-8: the
	// encoder would replace it with U+FFFD and lose bytes.
	DataBase64 []byte `json:"data_base64,omitempty"`
}

// NewRecord builds the record of one message.
func NewRecord(stream, subject string, seq uint64, published time.Time, headers nats.Header, payload []byte) Record {
	r := Record{Stream: stream, Subject: subject, Seq: seq, Time: published.UTC(), Headers: map[string][]string{}}
	for k, v := range headers {
		r.Headers[k] = v
	}
	if utf8.Valid(payload) {
		s := string(payload)
		r.Data = &s
	} else {
		r.DataBase64 = payload
	}
	return r
}

// Payload returns the message payload exactly as it was published.
func (r Record) Payload() ([]byte, error) {
	switch {
	case r.Data != nil && r.DataBase64 != nil:
		return nil, errors.New("record has both data and data_base64")
	case r.Data != nil:
		return []byte(*r.Data), nil
	case r.DataBase64 != nil:
		return r.DataBase64, nil
	}
	return nil, errors.New("record has neither data nor data_base64")
}

// recordEncoder writes records as NDJSON.
type recordEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
	out io.Writer
}

func newRecordEncoder(out io.Writer) *recordEncoder {
	e := &recordEncoder{out: out}
	e.enc = json.NewEncoder(&e.buf)
	// Payloads are mostly JSON text; keep '<', '>' and '&' readable.
	e.enc.SetEscapeHTML(false)
	return e
}

// write encodes one record as a single line (the encoder ends it with '\n').
func (e *recordEncoder) write(r Record) error {
	e.buf.Reset()
	if err := e.enc.Encode(r); err != nil {
		return fmt.Errorf("encode record seq %d: %w", r.Seq, err)
	}
	if _, err := e.out.Write(e.buf.Bytes()); err != nil {
		return fmt.Errorf("write record seq %d: %w", r.Seq, err)
	}
	return nil
}

// DecodeRecords reads NDJSON records, for tools and tests that consume a replay.
func DecodeRecords(r io.Reader) ([]Record, error) {
	dec := json.NewDecoder(r)
	var out []Record
	for {
		var rec Record
		err := dec.Decode(&rec)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("record %d: %w", len(out)+1, err)
		}
		out = append(out, rec)
	}
}
