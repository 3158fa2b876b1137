package subjects

import (
	"strings"
	"testing"
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
		strings.Repeat("x", 300): strings.Repeat("x", 128),
		"\u00a0nbsp\u0085nel":    "_nbsp_nel",
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

func FuzzToken(f *testing.F) {
	f.Add("a.b*c>d e")
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		if !ValidToken(tok) || strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("Token(%q) = %q", s, tok)
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
