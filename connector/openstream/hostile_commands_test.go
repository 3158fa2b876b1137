package openstream

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

// hostileAllow is the CONTROL allow-list of the hostile-command robot.
var hostileAllow = []string{"/project/robot/trajectory/*", pathMotorOn}

// startControlOnly runs a robot with CONTROL allowed and no MONITOR, so the
// only lines the controller gets are HANDSHAKE and what commands send.
func startControlOnly(t *testing.T, opts connectortest.Options) (*fixture, *sim.Server) {
	t.Helper()
	s := startSim(t, nil)
	rc := RobotConfig{Name: robotName, Addr: s.Addr(), Monitors: map[string]Recipe{}, ControlAllow: hostileAllow}
	f := start(t, s, rc, testConfig(), opts)
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	return f, s
}

// commandLines returns what the controller received besides HANDSHAKE, and
// fails on any line that is not one valid JSON object.
func commandLines(t *testing.T, s *sim.Server) []sim.Command {
	t.Helper()
	var out []sim.Command
	for _, c := range s.Received() {
		if !json.Valid(c.Raw) || strings.ContainsAny(string(c.Raw), "\r\n") {
			t.Fatalf("the controller received a malformed line: %q", c.Raw)
		}
		if c.Cmd != "HANDSHAKE" {
			out = append(out, c)
		}
	}
	return out
}

// Hostile CONTROL, MONITOR and STOP requests are refused with their code
// before anything is written; nothing but the accepted commands, each one
// well-formed re-encoded line, reaches the controller; every refusal is
// counted and audited with its code.
func TestHostileCommandsNeverReachTheController(t *testing.T) {
	t.Parallel()
	f, s := startControlOnly(t, connectortest.Options{CommandMaxBytes: 4096})
	ctl := func(url string) string { return fmt.Sprintf(`{"url":%s,"method":"POST","body":{}}`, mustJSON(url)) }
	cases := []struct{ cmd, body, code string }{
		// Not JSON, wrong types, unknown or ambiguous fields.
		{"control", `{"url":`, connector.CodeInvalidJSON},
		{"control", `"just a string"`, connector.CodeInvalidJSON},
		{"control", `[{"url":"/project/robot/motor_on","method":"POST"}]`, connector.CodeInvalidJSON},
		{"control", `{"url":17,"method":"POST"}`, connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","method":["POST"]}`, connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","method":"POST","cmd":"STOP"}`, connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","method":"POST","payload":{}}`, connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","URL":"/project/robot/motor_off","method":"POST"}`, connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","url":"/project/robot/motor_off","method":"POST"}`, connector.CodeInvalidJSON},
		{"control", "{\"url\":\"/project/robot/motor_on\",\"method\":\"POST\",\"body\":{\"a\":\"\xfe\"}}", connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","method":"post"}`, "invalid_method"},
		{"control", `{"url":"/project/robot/motor_on","method":"GET"}`, "invalid_method"},
		{"control", `{"url":"/project/robot/motor_on","method":"POST","body":"{}"}`, "invalid_body"},
		{"control", `{"url":"/project/robot/motor_on","method":"POST","args":"a=1"}`, "invalid_args"},
		{"monitor", `{"url":"/project/robot/po_cur","period_ms":"10"}`, "invalid_period"},
		{"monitor", `{"url":"/project/robot/po_cur","period_ms":1.5}`, "invalid_period"},
		{"monitor", `{"url":"/project/robot/po_cur","period_ms":10,"name":"a.b"}`, CodeInvalidName},
		{"monitor", `{"url":"/project/robot/po_cur","period_ms":10,"name":"a\nb"}`, CodeInvalidName},
		{"monitor", `{"url":"/project robot","period_ms":10}`, "invalid_url"},
		{"monitor", `{"url":"/project/robot/po_cur","method":"POST","period_ms":10}`, "invalid_method"},
		{"monitor", `{"url":"/project/robot/po_cur","period_ms":10,"extra":true}`, connector.CodeInvalidJSON},
		{"stop", `{"target":"session\n"}`, "invalid_target"},
		{"stop", `{"target":"monitor","name":"*"}`, CodeInvalidName},
		{"stop", `{"target":"control","name":"x"}`, "invalid_value"},
		{"stop", `{"target":1}`, connector.CodeInvalidJSON},
		// NDJSON injection: a second object after the first, raw or after a
		// newline, and newlines smuggled into the URL.
		{"control", "{\"url\":\"/project/robot/motor_on\",\"method\":\"POST\"}\n{\"cmd\":\"CONTROL\",\"payload\":{\"url\":\"/project/robot/motor_off\",\"method\":\"POST\"}}", connector.CodeInvalidJSON},
		{"control", `{"url":"/project/robot/motor_on","method":"POST"}{"cmd":"STOP","payload":{"target":"session"}}`, connector.CodeInvalidJSON},
		{"control", ctl("/project/robot/motor_on\n{\"cmd\":\"STOP\"}"), "invalid_url"},
		{"control", `{"url":"/project/robot/motor_on\u000a","method":"POST"}`, "invalid_url"},
		{"control", `{"url":"/project/robot/motor_on\u2028","method":"POST"}`, "invalid_url"},
		// URLs outside the allow-list or with encoded tricks.
		{"control", ctl("/project/robot/motor_off"), CodeControlNotAllowed},
		{"control", ctl("/project/robot/MOTOR_ON"), CodeControlNotAllowed},
		{"control", ctl("/Project/robot/trajectory/joint_traject_init"), CodeControlNotAllowed},
		{"control", ctl("/project/robot/trajectory/a/b"), CodeControlNotAllowed},
		{"control", ctl("/project/robot/trajectory"), CodeControlNotAllowed},
		{"control", ctl("project/robot/motor_on"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/../motor_off"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/..;/motor_off"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/..."), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/."), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/%2e%2e"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/%2E%2E/motor_off"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory%2Fjoint_traject_init"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/%252e%252e"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory//joint_traject_init"), "invalid_url"},
		{"control", ctl("//project/robot/motor_on"), "invalid_url"},
		{"control", ctl("/project/robot/motor_on/"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/joint traject"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/joint\ttraject"), "invalid_url"},
		{"control", ctl("/project/robot/motor_on?x=1"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/x?/../../motor_off"), "invalid_url"},
		{"control", ctl("/project/robot/motor_on#frag"), "invalid_url"},
		{"control", ctl(`/project/robot/trajectory/..\motor_off`), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/x;jsessionid=1"), "invalid_url"},
		{"control", ctl("/project/robot/motor_оn"), "invalid_url"},                      // Cyrillic o
		{"control", ctl("/project/robot/trajectory/ｊoint_traject_init"), "invalid_url"}, // fullwidth j
		{"control", ctl("/project/robot/trajectory/x\u200b"), "invalid_url"},            // zero-width space
		{"control", ctl("/project/robot/trajectory/x\u00a0"), "invalid_url"},
		{"control", ctl("/project/robot/trajectory/" + strings.Repeat("a", 2100)), "url_too_long"},
		{"control", ctl(""), "missing_url"},
		// Oversized (the limit of this runtime is 4096 bytes).
		{"control", `{"url":"/project/robot/motor_on","method":"POST","body":{"pad":"` + strings.Repeat("x", 5000) + `"}}`, connector.CodeRequestTooLarge},
	}
	want := map[string]int{}
	for _, tc := range cases {
		f.mustRefuse(tc.cmd, tc.body, tc.code)
		want[tc.code]++
	}
	if lines := commandLines(t, s); len(lines) != 0 {
		t.Fatalf("refused commands reached the controller: %q", lines[0].Raw)
	}

	// Accepted, with newlines and a whole injected command inside string
	// values: exactly one re-encoded line each, carrying the text as data.
	injected := "x\"}}\n{\"cmd\":\"STOP\",\"payload\":{\"target\":\"session\"}}\n"
	bodies := []string{
		"{\"url\":\"/project/robot/motor_on\",\n\"method\":\"POST\",\r\n\"body\":{\"note\":" + mustJSON(injected) + "}}",
		`{"url":"/project/robot/trajectory/joint_traject_init","method":"POST","args":{"q":"a\nb\u2028c"},"body":[{"s":"\r\n"}]}`,
	}
	for _, b := range bodies {
		f.mustOK("control", b)
	}
	lines := commandLines(t, s)
	if len(lines) != len(bodies) {
		t.Fatalf("controller received %d command lines, want %d", len(lines), len(bodies))
	}
	for _, l := range lines {
		var got struct {
			Cmd     string `json:"cmd"`
			Payload struct {
				URL string `json:"url"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(l.Raw, &got); err != nil || got.Cmd != "CONTROL" || !allowedURL(hostileAllow, got.Payload.URL) {
			t.Fatalf("controller line %q", l.Raw)
		}
	}
	if !strings.Contains(string(lines[0].Raw), `"note":"x\"}}\n{\"cmd\":\"STOP\"`) {
		t.Fatalf("the injected text was not carried as escaped data: %q", lines[0].Raw)
	}

	// Every refusal is counted and audited with its code.
	for code, n := range want {
		if got := f.env.MetricWhere("connector_commands_total", map[string]string{"session": robotName, "outcome": code}); got != float64(n) {
			t.Errorf("%s counted %v times, want %d", code, got, n)
		}
	}
	f.env.WaitCount(subjects.StreamAudit, f.subject("audit", ">"), uint64(len(cases)+len(bodies)), waitLong)
	audited := f.env.AuditedRefusals(f.subject("audit", ">"))
	for code, n := range want {
		if audited[code] != n {
			t.Errorf("%s audited %d times, want %d", code, audited[code], n)
		}
	}
}

// A flood of no-reply CONTROLs (trajectory style) beyond the session's rate
// limit: the excess is counted, audited and dropped; nothing beyond the limit
// reaches the controller; requests get rate_limited.
func TestHostileCommandFloodIsRateLimited(t *testing.T) {
	t.Parallel()
	const rate, burst = 20, 50
	f, s := startControlOnly(t, connectortest.Options{CommandRate: rate, CommandBurst: burst})
	subj := f.subject("cmd", "control")
	body := []byte(`{"url":"` + pathMotorOn + `","method":"POST","body":{}}`)
	start := time.Now()
	const floods = 2000
	for i := 0; i < floods; i++ {
		if err := f.env.Conn.Publish(subj, body); err != nil {
			t.Fatal(err)
		}
	}
	r := f.cmd("control", string(body))
	elapsed := time.Since(start)
	if r.OK || r.Error == nil || r.Error.Code != connector.CodeRateLimited {
		t.Fatalf("request after the flood: %+v", r.Raw)
	}
	connectortest.Eventually(t, waitLong, "every command counted", func() bool {
		return f.env.MetricWhere("connector_commands_total", map[string]string{"session": robotName}) == floods+1
	})
	admitted := int(f.env.MetricWhere("connector_commands_total", map[string]string{"session": robotName, "outcome": "ok"}))
	limited := int(f.env.MetricWhere("connector_commands_total", map[string]string{"session": robotName, "outcome": connector.CodeRateLimited}))
	maxAdmitted := burst + int(elapsed.Seconds()*rate) + 1
	if admitted < burst || admitted > maxAdmitted || admitted+limited != floods+1 {
		t.Fatalf("admitted %d, rate_limited %d, want admitted in [%d, %d]", admitted, limited, burst, maxAdmitted)
	}
	waitSim(t, s, "the admitted CONTROLs written", func() bool { return len(received(s, "CONTROL")) == admitted })
	if lines := commandLines(t, s); len(lines) != admitted {
		t.Fatalf("controller received %d lines, %d admitted", len(lines), admitted)
	}
	t.Logf("flood of %d in %s: %d admitted, %d rate_limited", floods+1, elapsed, admitted, limited)
	connectortest.Eventually(t, 10*time.Second, "every rate_limited refusal audited", func() bool {
		return f.env.AuditedRefusals(f.subject("audit", "control"))[connector.CodeRateLimited] == limited
	})
}

// Commands for robots this connector does not serve get unknown_session at
// once, naming the robots it serves, and are audited.
func TestHostileCommandUnknownRobot(t *testing.T) {
	t.Parallel()
	f, s := startControlOnly(t, connectortest.Options{})
	start := time.Now()
	r := f.env.Request(subjects.Command(subjects.KindOpenStream, "cell9", "control"),
		`{"url":"`+pathMotorOn+`","method":"POST"}`, 2*time.Second)
	took := time.Since(start)
	if r.OK || r.Error == nil || r.Error.Code != connector.CodeUnknownSession || !strings.Contains(r.Error.Message, robotName) || took > time.Second {
		t.Fatalf("reply after %s: %+v", took, r.Raw)
	}
	if n := f.env.WaitCount(subjects.StreamAudit, "openstream.cell9.audit.control", 1, waitLong); n != 1 {
		t.Fatalf("unknown robot audit records: %d", n)
	}
	if lines := commandLines(t, s); len(lines) != 0 {
		t.Fatalf("a command for another robot reached this controller: %q", lines[0].Raw)
	}
}
