package subjects

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTokenNeverInjectsSubjectLevelsOrWildcards(t *testing.T) {
	for in, want := range map[string]string{
		"":                       Placeholder,
		"Wallet1":                "Wallet1",
		"a.b":                    "a_b",
		"*":                      "_",
		">":                      "_",
		"has space":              "has_space",
		"tab\there":              "tab_here",
		"new\nline":              "new_line",
		"ctl\x00x":               "ctl_x",
		"pos-42_ok":              "pos-42_ok",
		"ünïcode":                "ünïcode",
		"lasersell.*.exit.>":     "lasersell___exit__",
		strings.Repeat("x", 128): strings.Repeat("x", 128),
		strings.Repeat("x", 300): strings.Repeat("x", 111) + "-" + "0d4e2ca9e9cbced7",
		"\u00a0nbsp\u0085nel":    "_nbsp_nel",
		"bad\xffutf8\xc3":        "bad_utf8_",
		"\ufffdreplacement":      "_replacement",
		"del\x7f\x1besc":         "del__esc",
	} {
		got := Token(in)
		if got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
		if !ValidToken(got) {
			t.Errorf("Token(%q) = %q is not a valid token", in, got)
		}
	}
}

// Long tokens are shortened with a hash of the whole input: distinct long
// upstream strings (wallets sharing a prefix) keep distinct subjects, and the
// result is itself a token Token leaves alone.
func TestTokenShortensLongStringsWithoutCollisions(t *testing.T) {
	long := strings.Repeat("W", 200)
	a, b := Token(long+"a"), Token(long+"b")
	if a == b {
		t.Fatalf("two long wallets share the token %q", a)
	}
	for _, in := range []string{long, long + "a", strings.Repeat("é", 100), strings.Repeat("a.", 1000), strings.Repeat("\xff", 129)} {
		tok := Token(in)
		if len(tok) > MaxTokenLen || !ValidToken(tok) || !utf8.ValidString(tok) || Token(tok) != tok {
			t.Errorf("Token(%.20q...) = %q (%d bytes)", in, tok, len(tok))
		}
	}
	// Multi-byte characters are never split.
	if tok := Token(strings.Repeat("é", 100)); !strings.HasPrefix(tok, strings.Repeat("é", 55)+"-") {
		t.Errorf("Token of 100 x é = %q", tok)
	}
	// A subject built from the longest tokens stays far below the server's
	// 4096-byte control line, with room for a reply inbox.
	if s := LaserSellEvent("session", long, long); len(s) > 2*MaxTokenLen+64 {
		t.Errorf("subject of %d bytes: %s", len(s), s)
	}
}

// FuzzToken checks what every subject built from upstream data relies on: the
// token is one valid, bounded, UTF-8 token; safe short inputs pass unchanged;
// Token is idempotent; only shortened tokens carry the hash suffix.
func FuzzToken(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		if !ValidToken(tok) || strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("Token(%q) = %q: not a valid token", s, tok)
		}
		if len(tok) > MaxTokenLen || !utf8.ValidString(tok) {
			t.Fatalf("Token(%q) = %q: %d bytes, valid UTF-8 %v", s, tok, len(tok), utf8.ValidString(tok))
		}
		if Token(tok) != tok {
			t.Fatalf("Token is not idempotent on %q: %q", tok, Token(tok))
		}
		if ValidToken(s) && len(s) <= MaxTokenLen && tok != s {
			t.Fatalf("Token(%q) = %q: a safe token must pass unchanged", s, tok)
		}
		if len(s) <= MaxTokenLen && len(tok) != len(s) && s != "" {
			// Replacements map one character to '_', never a longer one.
			if utf8.RuneCountInString(tok) != len([]rune(s)) {
				t.Fatalf("Token(%q) = %q: characters added or lost", s, tok)
			}
		}
	})
}

func TestSubjectsHaveFixedDepth(t *testing.T) {
	for _, s := range []string{
		LaserSellExit("S", "w.x"), LaserSellPnL("S", "1 2"), LaserSellEvent("S", "a.b", "*"),
		OpenStreamData("R", "m>"), OpenStreamEvent("R", "x.y"), Audit("lasersell", "S", "c.d"),
	} {
		if n := strings.Count(s, "."); n < 3 || n > 4 {
			t.Errorf("%s has %d levels", s, n+1)
		}
	}
}

// No stream may capture a command subject: JetStream would answer the request.
func TestNoStreamCapturesCommands(t *testing.T) {
	cmds := []string{Command(KindLaserSell, "S", "configure"), Command(KindOpenStream, "R", "control")}
	for _, spec := range Streams() {
		for _, pattern := range spec.Subjects {
			for _, c := range cmds {
				if matches(pattern, c) {
					t.Errorf("stream %s subject %s captures %s", spec.Name, pattern, c)
				}
			}
		}
	}
	if !matches("lasersell.*.event.>", LaserSellEvent("S", "hello_ok", "_")) {
		t.Fatal("matches is broken")
	}
}

func matches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// The stream patterns are derived from the builders; this pins what they
// derive to the documented contract (README, DESIGN.md), so a change to a
// builder cannot silently move a stream's subjects.
func TestStreamPatternsAreTheDocumentedContract(t *testing.T) {
	want := map[string][]string{
		StreamLaserSellExit:   {"lasersell.*.exit.*"},
		StreamLaserSellPnL:    {"lasersell.*.pnl.*"},
		StreamLaserSellEvents: {"lasersell.*.event.>", "lasersell.*.status", "lasersell.*.malformed"},
		StreamOpenStreamData:  {"openstream.*.data.*"},
		StreamOpenStreamEvent: {"openstream.*.event.*", "openstream.*.status", "openstream.*.malformed"},
		StreamAudit:           {"lasersell.*.audit.*", "openstream.*.audit.*"},
	}
	streams := Streams(LaserSell(), OpenStream())
	if len(streams) != len(want) {
		t.Fatalf("%d streams, want %d", len(streams), len(want))
	}
	for _, s := range streams {
		if got := strings.Join(s.Subjects, " "); got != strings.Join(want[s.Name], " ") {
			t.Errorf("stream %s captures %q, want %q", s.Name, got, want[s.Name])
		}
		for _, p := range s.Subjects {
			if strings.Contains(p, ".cmd.") || strings.HasSuffix(p, ".cmd") {
				t.Errorf("stream %s captures command subjects with %q", s.Name, p)
			}
		}
	}
	var names []string
	for _, b := range Buckets(LaserSell(), OpenStream()) {
		names = append(names, b.Name)
	}
	if got := strings.Join(names, " "); got != "CONNECTOR_DESIRED CONNECTOR_STATUS LASERSELL_POSITIONS" {
		t.Errorf("buckets %s", got)
	}
}
