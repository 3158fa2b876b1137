package connector

import (
	"fmt"

	"github.com/jetbridge/connector/subjects"
)

// Session is one upstream session a kind's configuration declares: what the
// runtime needs to start it. The runtime builds the session's Host when it
// starts it (Runtime.Start), opens the Source on it, serves its commands and
// runs it until the session is stopped (Runtime.Stop) or the runtime ends.
type Session struct {
	// Kind and Name are the first two tokens of every subject the session owns.
	Kind, Name string
	// Lanes bounds the session's queues (zero fields take the defaults).
	Lanes LaneSizes
	// Open builds the session's source on the host the runtime made for it.
	// It must not start anything: Run does.
	Open func(h *Host) (Source, error)
}

// Key is the session's name across the system: "<kind>.<name>", its key in
// CONNECTOR_STATUS and the prefix of its keys in the other buckets.
func (s Session) Key() string { return subjects.SessionKey(s.Kind, s.Name) }

// validate reports a session the runtime cannot start.
func (s Session) validate() error {
	switch {
	case !subjects.ValidToken(s.Kind) || !subjects.ValidToken(s.Name):
		return fmt.Errorf("session %q of %q: names may not be empty or contain '.', '*', '>' or whitespace", s.Name, s.Kind)
	case s.Open == nil:
		return fmt.Errorf("session %s: no Open function", s.Key())
	}
	return nil
}

// Owner is the replica that runs a session and the epoch of its lease, as a
// fleet starts it (StartOwned); the zero Owner is a process without a fleet.
type Owner struct {
	Replica string `json:"replica,omitempty"`
	Epoch   uint64 `json:"epoch,omitempty"`
}
