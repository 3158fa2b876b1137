package openstream

import (
	"strings"
	"testing"

	"github.com/kelseyhightower/envconfig"
)

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("OPENSTREAM_ROBOTS", "cell1=10.0.0.5:49001, cell2=10.0.0.6")
	t.Setenv("OPENSTREAM_MONITORS", "cell1/joints=/project/robot/joints/joint_states@2ms,cell2=/project/robot/po_cur@1s")
	t.Setenv("OPENSTREAM_CONTROL_ALLOW", "cell1=/project/robot/trajectory/*,/project/robot/motor_on")
	var c Config
	if err := envconfig.Process("", &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	def := Defaults()
	def.Robots, def.Monitors, def.ControlAllow = c.Robots, c.Monitors, c.ControlAllow
	if c != def {
		t.Errorf("envconfig defaults differ from Defaults():\n%+v\n%+v", c, def)
	}
	robots, err := c.ParseRobots()
	if err != nil {
		t.Fatal(err)
	}
	if len(robots) != 2 || robots[0].Name != "cell1" || robots[1].Name != "cell2" {
		t.Fatalf("robots: %+v", robots)
	}
	if robots[0].Addr != "10.0.0.5:49001" || robots[1].Addr != "10.0.0.6:49000" {
		t.Errorf("addresses: %s %s", robots[0].Addr, robots[1].Addr)
	}
	if m := robots[0].Monitors["joints"]; m.URL != "/project/robot/joints/joint_states" || m.PeriodMS != 2 || m.Method != "GET" {
		t.Errorf("cell1 monitor: %+v", m)
	}
	if m := robots[1].Monitors[DefaultMonitor]; m.PeriodMS != 1000 {
		t.Errorf("cell2 monitor: %+v", m)
	}
	if got := strings.Join(robots[0].ControlAllow, " "); got != "/project/robot/trajectory/* /project/robot/motor_on" {
		t.Errorf("allow-list: %q", got)
	}
	if len(robots[1].ControlAllow) != 0 {
		t.Errorf("cell2 must have CONTROL disabled")
	}
}

func TestConfigJSONMonitorsAndAllow(t *testing.T) {
	c := Defaults()
	c.Robots = "a=h1,b=h2:1"
	c.Monitors = `{"a":{"pose":{"url":"/project/robot/po_cur","period_ms":1,"args":{"task_no":0, "crd":"base"}}}}`
	c.ControlAllow = "a=/x/*,/y;b=/z"
	robots, err := c.ParseRobots()
	if err != nil {
		t.Fatal(err)
	}
	m := robots[0].Monitors["pose"]
	if m.PeriodMS != MinPeriodMS || string(m.Args) != `{"task_no":0,"crd":"base"}` {
		t.Errorf("JSON monitor: %+v %s", m, m.Args)
	}
	if len(robots[0].ControlAllow) != 2 || robots[1].ControlAllow[0] != "/z" {
		t.Errorf("allow: %v %v", robots[0].ControlAllow, robots[1].ControlAllow)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	base := Defaults()
	base.Robots = "cell1=h"
	cases := map[string]func(*Config){
		"OPENSTREAM_ROBOTS":              func(c *Config) { c.Robots = "bad.name=h" },
		"OPENSTREAM_ROBOTS ":             func(c *Config) { c.Robots = "cell1" },
		"OPENSTREAM_MONITORS":            func(c *Config) { c.Monitors = "cell9/x=/a@2" },
		"OPENSTREAM_MONITORS ":           func(c *Config) { c.Monitors = "cell1/x=no-slash@2" },
		"OPENSTREAM_MONITORS  ":          func(c *Config) { c.Monitors = "cell1/x=/a" },
		"OPENSTREAM_CONTROL_ALLOW":       func(c *Config) { c.ControlAllow = "cell1=relative" },
		"OPENSTREAM_CONTROL_ALLOW ":      func(c *Config) { c.ControlAllow = "/a" },
		"OPENSTREAM_BACKOFF_MAX":         func(c *Config) { c.BackoffMax = 0 },
		"OPENSTREAM_MAX_LINE":            func(c *Config) { c.MaxLine = 10 },
		"OPENSTREAM_HANDSHAKE_RETRY_MIN": func(c *Config) { c.HandshakeRetryMin = 0 },
	}
	for want, mutate := range cases {
		c := base
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), strings.TrimSpace(want)+":") {
			t.Errorf("%s: got %v", want, err)
		}
	}
}
