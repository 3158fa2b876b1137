package main

import (
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"
)

// composeFile is the part of docker-compose.yml the checks read.
// connectorImage is the one image compose builds for the connector and the simulators.
const connectorImage = "jetbridge/connector:dev"

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Image      string `yaml:"image"`
	PullPolicy string `yaml:"pull_policy"`
	Restart    string `yaml:"restart"`
	Build      struct {
		Context string            `yaml:"context"`
		Args    map[string]string `yaml:"args"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Secrets     []string          `yaml:"secrets"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		StartPeriod string   `yaml:"start_period"`
		Retries     int      `yaml:"retries"`
	} `yaml:"healthcheck"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true) // a misspelt key fails here instead of being ignored by Docker
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// containerPorts returns the container side of "host:container" mappings.
func containerPorts(t *testing.T, mappings []string) []string {
	t.Helper()
	var out []string
	for _, m := range mappings {
		parts := strings.Split(m, ":")
		out = append(out, parts[len(parts)-1])
	}
	return out
}

func portOf(t *testing.T, hostport string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q is not host:port: %v", hostport, err)
	}
	return port
}

// flagValue returns the value of -name in a command line.
func flagValue(cmd []string, name string) string {
	for i, a := range cmd {
		if (a == "-"+name || a == "--"+name) && i+1 < len(cmd) {
			return cmd[i+1]
		}
	}
	return ""
}

// The image's entrypoint, which health checks must call by path.
func imageEntrypoint(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"\]`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("Dockerfile has no exec-form ENTRYPOINT")
	}
	for _, want := range []string{"CGO_ENABLED=0", "USER 65532", "FROM gcr.io/distroless/static"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("Dockerfile lacks %q (static, non-root image)", want)
		}
	}
	return string(m[1])
}

// docker compose cannot run here, so check what can be checked: every
// service's command, health check and environment is accepted by the code the
// binary runs, and addresses, ports and dependencies line up.
func TestComposeCommandsAndEnvironmentAreValid(t *testing.T) {
	compose := readCompose(t)
	entrypoint := imageEntrypoint(t)
	vars, err := envVariables()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"GOGC": true}
	for _, v := range vars {
		known[v[0]] = true
	}
	streamVar := regexp.MustCompile(`^STREAM_[A-Z_]+_(MAX_AGE|MAX_BYTES|REPLICAS|STORAGE|DUPLICATES)$`)

	// simPorts: the port each simulator service listens on.
	simPorts := map[string]string{}
	sims, runs := 0, 0
	builds := 0
	for name, svc := range compose.Services {
		if svc.Restart != "unless-stopped" {
			t.Errorf("service %s: restart %q, want unless-stopped", name, svc.Restart)
		}
		if svc.Image != connectorImage {
			continue // third-party image (nats), checked below
		}
		switch {
		case svc.Build.Context == ".":
			builds++
			if _, ok := svc.Build.Args["REVISION"]; !ok {
				t.Errorf("service %s builds without the REVISION argument (connector version)", name)
			}
		case svc.Build.Context != "":
			t.Errorf("service %s: build context %q, want the repository's Dockerfile (.)", name, svc.Build.Context)
		case svc.PullPolicy != "never":
			t.Errorf("service %s uses the image another service builds: pull_policy %q, want never", name, svc.PullPolicy)
		}
		if len(svc.Command) == 0 {
			t.Fatalf("service %s has no command", name)
		}
		switch svc.Command[0] {
		case "sim":
			start, err := parseSim(svc.Command[1], svc.Command[2:], zerolog.Nop())
			if err != nil || start == nil {
				t.Errorf("service %s: %v %v", name, svc.Command, err)
			}
			addr := flagValue(svc.Command, "addr")
			simPorts[name] = portOf(t, addr)
			if len(svc.Ports) > 0 && !slices.Contains(containerPorts(t, svc.Ports), simPorts[name]) {
				t.Errorf("service %s listens on %s but publishes %v", name, addr, svc.Ports)
			}
			if http := flagValue(svc.Command, "http-addr"); http != "" && !slices.Contains(containerPorts(t, svc.Ports), portOf(t, http)) {
				t.Errorf("service %s serves HTTP on %s but publishes %v", name, http, svc.Ports)
			}
			sims++
		case "run":
			for k := range svc.Environment {
				if !known[k] && !streamVar.MatchString(k) {
					t.Errorf("service %s sets %s, which the connector does not read", name, k)
				}
			}
			runs++
		default:
			t.Errorf("service %s: unknown command %v", name, svc.Command)
		}
		if hc := svc.Healthcheck.Test; len(hc) > 0 {
			checkHealthTimings(t, name, svc)
			if len(hc) < 3 || hc[0] != "CMD" || hc[1] != entrypoint {
				t.Errorf("service %s: health check %v must be [CMD %s ...] (the image has no shell)", name, hc, entrypoint)
				continue
			}
			if hc[2] != "probe" {
				t.Errorf("service %s: health check %v, want the probe subcommand", name, hc)
				continue
			}
			probeURL, _, err := parseProbe(hc[3:], io.Discard)
			if err != nil || probeURL == "" {
				t.Errorf("service %s: health check %v: %v", name, hc, err)
				continue
			}
			u, err := url.Parse(probeURL)
			if err != nil {
				t.Fatal(err)
			}
			if svc.Command[0] == "sim" && u.Port() != simPorts[name] {
				t.Errorf("service %s: health check probes port %s, the simulator listens on %s", name, u.Port(), simPorts[name])
			}
		}
	}
	if sims != 3 || runs != 1 {
		t.Fatalf("compose has %d simulators and %d connectors, want 3 and 1", sims, runs)
	}
	if builds != 1 {
		t.Errorf("%d services build %s, want one (the others use it)", builds, connectorImage)
	}

	nats := compose.Services["nats"]
	// The same nats-server line as the embedded one (go.mod).
	goMod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`).FindSubmatch(goMod)
	if line == nil || nats.Image != "nats:"+string(line[1])+"-alpine" {
		t.Errorf("nats image %q, want nats:%s-alpine (the embedded server's line, go.mod)", nats.Image, line[1])
	}
	if !slices.Contains(nats.Command, "-js") || flagValue(nats.Command, "sd") == "" {
		t.Errorf("nats runs %v: JetStream (-js) with a store directory (-sd) is required", nats.Command)
	}
	if !slices.ContainsFunc(nats.Volumes, func(v string) bool {
		name, dir, _ := strings.Cut(v, ":")
		return compose.Volumes != nil && hasKey(compose.Volumes, name) && dir == flagValue(nats.Command, "sd")
	}) {
		t.Errorf("nats volumes %v: the store directory must be a named volume", nats.Volumes)
	}
	if hc := strings.Join(nats.Healthcheck.Test, " "); !strings.Contains(hc, ":"+flagValue(nats.Command, "m")+"/healthz") {
		t.Errorf("nats health check %q does not probe its monitoring port %s", hc, flagValue(nats.Command, "m"))
	}

	conn := compose.Services["connector"]
	env := conn.Environment
	for k, v := range env {
		if k == "LASERSELL_API_KEY_FILE" {
			if len(conn.Secrets) != 1 || v != "/run/secrets/"+conn.Secrets[0] {
				t.Fatalf("LASERSELL_API_KEY_FILE=%s does not name the service's secret %v", v, conn.Secrets)
			}
			v = "../../" + strings.TrimPrefix(compose.Secrets[conn.Secrets[0]].File, "./")
		}
		t.Setenv(k, v)
	}
	// The key the connector reads from its secret is the one the simulator requires.
	if keyFile := env["LASERSELL_API_KEY_FILE"]; keyFile != "" {
		key, err := os.ReadFile("../../" + strings.TrimPrefix(compose.Secrets[conn.Secrets[0]].File, "./"))
		if err != nil {
			t.Fatal(err)
		}
		if want := flagValue(compose.Services["lasersell-sim"].Command, "api-key"); strings.TrimSpace(string(key)) != want {
			t.Errorf("the connector's API key secret %q is not the simulator's -api-key %q: the stack would never become ready", strings.TrimSpace(string(key)), want)
		}
	}
	summary, err := checkConfig()
	if err != nil {
		t.Fatalf("connector environment: %v", err)
	}
	if !strings.Contains(summary, "sources lasersell, openstream") {
		t.Fatalf("connector would run %q, want both sources", summary)
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	httpPort := portOf(t, cfg.HTTPAddr)
	if host, _, _ := net.SplitHostPort(cfg.HTTPAddr); host != "0.0.0.0" {
		t.Errorf("CONNECTOR_HTTP_ADDR=%s: inside a container it must listen on 0.0.0.0 to be published", cfg.HTTPAddr)
	}
	if !slices.Contains(containerPorts(t, conn.Ports), httpPort) {
		t.Errorf("connector serves HTTP on %s but publishes %v", cfg.HTTPAddr, conn.Ports)
	}
	if hc := conn.Healthcheck.Test; len(hc) < 4 || !strings.HasSuffix(hc[len(hc)-1], ":"+httpPort+"/readyz") {
		t.Errorf("connector health check %v must probe /readyz on port %s", hc, httpPort)
	}
	if u, err := url.Parse(cfg.NATSConfig.URL); err != nil || u.Hostname() != "nats" || !slices.Contains(containerPorts(t, nats.Ports), u.Port()) {
		t.Errorf("NATS_URL=%s does not reach the nats service", cfg.NATSConfig.URL)
	}

	// Every upstream the connector dials is a simulator service on its port.
	targets := map[string]string{}
	if u, err := url.Parse(env["LASERSELL_URL"]); err == nil {
		targets[u.Hostname()] = u.Port()
	}
	for _, robot := range strings.Split(env["OPENSTREAM_ROBOTS"], ",") {
		_, hostport, _ := strings.Cut(robot, "=")
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			t.Fatalf("OPENSTREAM_ROBOTS entry %q: %v", robot, err)
		}
		targets[host] = port
	}
	if len(targets) != 3 {
		t.Fatalf("connector dials %v, want the three simulators", targets)
	}
	for host, port := range targets {
		if simPorts[host] != port {
			t.Errorf("connector dials %s:%s, but service %s listens on port %q", host, port, host, simPorts[host])
		}
		if conn.DependsOn[host].Condition == "" {
			t.Errorf("connector does not depend on %s", host)
		}
	}
	if conn.DependsOn["nats"].Condition != "service_healthy" {
		t.Errorf("connector must wait for nats to be healthy, has %q", conn.DependsOn["nats"].Condition)
	}
	for dep, d := range conn.DependsOn {
		if d.Condition == "service_healthy" && len(compose.Services[dep].Healthcheck.Test) == 0 {
			t.Errorf("connector waits for %s to be healthy, but it has no health check", dep)
		}
	}
}

// Compose reads health-check durations as Go durations; a probe must give up
// before Docker does.
func checkHealthTimings(t *testing.T, name string, svc composeService) {
	t.Helper()
	hc := svc.Healthcheck
	durations := map[string]time.Duration{}
	for field, v := range map[string]string{"interval": hc.Interval, "timeout": hc.Timeout, "start_period": hc.StartPeriod} {
		if v == "" {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Errorf("service %s: healthcheck %s %q is not a positive duration", name, field, v)
		}
		durations[field] = d
	}
	if hc.Retries < 1 {
		t.Errorf("service %s: healthcheck retries %d", name, hc.Retries)
	}
	if len(hc.Test) > 2 && hc.Test[2] == "probe" {
		if _, probeTimeout, err := parseProbe(hc.Test[3:], io.Discard); err == nil && durations["timeout"] > 0 && probeTimeout >= durations["timeout"] {
			t.Errorf("service %s: probe timeout %s is not below the healthcheck timeout %s", name, probeTimeout, durations["timeout"])
		}
	}
}

func hasKey(m map[string]any, k string) bool {
	_, ok := m[k]
	return ok
}
