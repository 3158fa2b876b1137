package openstream

import (
	"fmt"
	"strings"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/openstream/sim"
)

// Demo robots: one fast arm that streams and accepts trajectories, one slow
// arm that only reports.
const (
	demoFastArm = "arm1" // MONITOR joint_states at 500 Hz, CONTROL allowed for trajectories
	demoSlowArm = "arm2" // MONITOR po_cur at 10 Hz, CONTROL disabled
)

// demo is Open Stream's part of `connector demo`: a simulated two-robot cell.
func demo() *connector.Demo {
	nats := "nats -s " + connector.NATSURL + " "
	return &connector.Demo{
		Summary: fmt.Sprintf("robots %s (500 Hz) and %s", demoFastArm, demoSlowArm),
		Try: []string{
			nats + "sub 'openstream." + demoFastArm + ".data.joints' --count 3",
			nats + "req openstream." + demoFastArm + `.cmd.control '{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":{"interval":0.005,"time_from_start":-1,"look_ahead_time":0.004,"point":[10,20,30,0,45,0]}}'`,
			nats + "req openstream." + demoSlowArm + `.cmd.monitor '{"name":"state","url":"/project/robot/motor_on_state","period_ms":500}'`,
		},
		Start: startDemo,
	}
}

func startDemo(log zerolog.Logger) (connector.DemoStart, error) {
	var servers []*sim.Server
	stop := func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}
	addrs := map[string]string{}
	for _, name := range []string{demoFastArm, demoSlowArm} {
		srv := sim.New(sim.DefaultConfig(), log.With().Str("robot", name).Logger())
		addr, err := srv.Start("127.0.0.1:0")
		if err != nil {
			stop()
			return connector.DemoStart{}, fmt.Errorf("robot simulator %s: %w", name, err)
		}
		servers = append(servers, srv)
		addrs[name] = addr
	}
	cfg := Defaults()
	cfg.Robots = fmt.Sprintf("%s=%s,%s=%s", demoFastArm, addrs[demoFastArm], demoSlowArm, addrs[demoSlowArm])
	cfg.Monitors = fmt.Sprintf("%s/joints=/project/robot/joints/joint_states@2ms,%s/pose=/project/robot/po_cur@100ms", demoFastArm, demoSlowArm)
	cfg.ControlAllow = demoFastArm + "=" + strings.Join([]string{"/project/robot/trajectory/*", "/project/robot/motor_on", "/project/robot/motor_off"}, ",")
	sessions, err := cfg.Sessions()
	if err != nil {
		stop()
		return connector.DemoStart{}, err
	}
	env := map[string]string{"OPENSTREAM_ROBOTS": cfg.Robots, "OPENSTREAM_MONITORS": cfg.Monitors, "OPENSTREAM_CONTROL_ALLOW": cfg.ControlAllow}
	return connector.DemoStart{Sessions: sessions, Env: env, Stop: stop}, nil
}
