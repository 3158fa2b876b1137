package main

import (
	"flag"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"

	"github.com/jetbridge/connector/subjects"
)

// connectorImage is the one image compose builds for the connector and the simulators.
const connectorImage = "jetbridge/connector:dev"

// The compose files: the local stack, and the cluster stack (three NATS
// nodes, three connector replicas).
const (
	composeLocal   = "docker-compose.yml"
	composeCluster = "docker-compose.cluster.yml"
)

// composeFile is the part of a compose file the checks read.
type composeFile struct {
	Name     string                    `yaml:"name"`
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
	Expose      []string          `yaml:"expose"` // ports reachable inside the compose network only
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

// readCompose reads the local stack's docker-compose.yml.
func readCompose(t *testing.T) composeFile {
	t.Helper()
	return readComposeFile(t, composeLocal)
}

func readComposeFile(t *testing.T, name string) composeFile {
	t.Helper()
	raw, err := os.ReadFile("../../" + name)
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

// composeStack is what checkComposeFile found in a compose file.
type composeStack struct {
	compose    composeFile
	nats       []string                   // nats-server services, sorted
	natsOpts   map[string]*server.Options // each one's command, as nats-server parses it
	connectors []string                   // `connector run` services, sorted
	simPorts   map[string]string          // the port each simulator service listens on
}

// docker compose cannot run here, so check what can be checked: every
// service's command, health check and environment is accepted by the code the
// binary runs, and addresses, ports and dependencies line up.
func TestComposeCommandsAndEnvironmentAreValid(t *testing.T) {
	stack := checkComposeFile(t, composeLocal, nil)
	if len(stack.nats) != 1 || len(stack.connectors) != 1 {
		t.Fatalf("%s has NATS services %v and connectors %v, want one of each", composeLocal, stack.nats, stack.connectors)
	}
}

// checkComposeFile checks every service of a compose file: the image the
// repository builds (built once), simulator commands parsed by the binary,
// connector environments accepted by it (each in a subtest, with extra run
// there too, its environment set), nats-server commands parsed by
// nats-server's own command line parser, health checks, ports and
// dependencies.
func checkComposeFile(t *testing.T, file string, extra func(t *testing.T, name string, cfg Config)) composeStack {
	t.Helper()
	compose := readComposeFile(t, file)
	stack := composeStack{compose: compose, natsOpts: map[string]*server.Options{}, simPorts: map[string]string{}}
	entrypoint := imageEntrypoint(t)
	vars, err := envVariables()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"GOGC": true, "GOMAXPROCS": true}
	for _, v := range vars {
		known[v[0]] = true
	}
	streamVar := regexp.MustCompile(`^STREAM_[A-Z_]+_(MAX_AGE|MAX_BYTES|REPLICAS|STORAGE|DUPLICATES)$`)

	sims, builds := 0, 0
	for _, name := range slices.Sorted(maps.Keys(compose.Services)) {
		svc := compose.Services[name]
		if svc.Restart != "unless-stopped" {
			t.Errorf("%s: service %s: restart %q, want unless-stopped", file, name, svc.Restart)
		}
		if strings.HasPrefix(svc.Image, "nats:") {
			stack.nats = append(stack.nats, name)
			continue
		}
		if svc.Image != connectorImage {
			continue // third-party image (prometheus, grafana)
		}
		switch {
		case svc.Build.Context == ".":
			builds++
			if _, ok := svc.Build.Args["REVISION"]; !ok {
				t.Errorf("%s: service %s builds without the REVISION argument (connector version)", file, name)
			}
		case svc.Build.Context != "":
			t.Errorf("%s: service %s: build context %q, want the repository's Dockerfile (.)", file, name, svc.Build.Context)
		case svc.PullPolicy != "never":
			t.Errorf("%s: service %s uses the image another service builds: pull_policy %q, want never", file, name, svc.PullPolicy)
		}
		if len(svc.Command) == 0 {
			t.Fatalf("%s: service %s has no command", file, name)
		}
		switch svc.Command[0] {
		case "sim":
			start, err := parseSim(svc.Command[1], svc.Command[2:], zerolog.Nop())
			if err != nil || start == nil {
				t.Errorf("%s: service %s: %v %v", file, name, svc.Command, err)
			}
			addr := flagValue(svc.Command, "addr")
			stack.simPorts[name] = portOf(t, addr)
			if len(svc.Ports) > 0 && !slices.Contains(containerPorts(t, svc.Ports), stack.simPorts[name]) {
				t.Errorf("%s: service %s listens on %s but publishes %v", file, name, addr, svc.Ports)
			}
			if http := flagValue(svc.Command, "http-addr"); http != "" && !slices.Contains(containerPorts(t, svc.Ports), portOf(t, http)) {
				t.Errorf("%s: service %s serves HTTP on %s but publishes %v", file, name, http, svc.Ports)
			}
			sims++
		case "run":
			if len(svc.Command) != 1 {
				t.Errorf("%s: service %s runs %v, want [run]", file, name, svc.Command)
			}
			for k := range svc.Environment {
				if !known[k] && !streamVar.MatchString(k) {
					t.Errorf("%s: service %s sets %s, which the connector does not read", file, name, k)
				}
			}
			stack.connectors = append(stack.connectors, name)
		default:
			t.Errorf("%s: service %s: unknown command %v", file, name, svc.Command)
		}
		if hc := svc.Healthcheck.Test; len(hc) > 0 {
			checkHealthTimings(t, name, svc)
			if len(hc) < 3 || hc[0] != "CMD" || hc[1] != entrypoint {
				t.Errorf("%s: service %s: health check %v must be [CMD %s ...] (the image has no shell)", file, name, hc, entrypoint)
				continue
			}
			if hc[2] != "probe" {
				t.Errorf("%s: service %s: health check %v, want the probe subcommand", file, name, hc)
				continue
			}
			probeURL, _, err := parseProbe(hc[3:], io.Discard)
			if err != nil || probeURL == "" {
				t.Errorf("%s: service %s: health check %v: %v", file, name, hc, err)
				continue
			}
			u, err := url.Parse(probeURL)
			if err != nil {
				t.Fatal(err)
			}
			if svc.Command[0] == "sim" && u.Port() != stack.simPorts[name] {
				t.Errorf("%s: service %s: health check probes port %s, the simulator listens on %s", file, name, u.Port(), stack.simPorts[name])
			}
		}
	}
	if sims != 3 || len(stack.connectors) == 0 || len(stack.nats) == 0 {
		t.Fatalf("%s has %d simulators, connectors %v and NATS services %v; want 3 simulators and at least one of each", file, sims, stack.connectors, stack.nats)
	}
	if builds != 1 {
		t.Errorf("%s: %d services build %s, want one (the others use it)", file, builds, connectorImage)
	}

	// The same nats-server line as the embedded one (go.mod).
	goMod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`).FindSubmatch(goMod)
	if line == nil {
		t.Fatal("go.mod names no nats-server version")
	}
	for _, name := range stack.nats {
		nats := compose.Services[name]
		if nats.Image != "nats:"+string(line[1])+"-alpine" {
			t.Errorf("%s: %s image %q, want nats:%s-alpine (the embedded server's line, go.mod)", file, name, nats.Image, line[1])
		}
		opts := natsCommandOptions(t, nats.Command)
		stack.natsOpts[name] = opts
		if !opts.JetStream || opts.StoreDir == "" {
			t.Errorf("%s: %s runs %v: JetStream (-js) with a store directory (-sd) is required", file, name, nats.Command)
		}
		if !slices.ContainsFunc(nats.Volumes, func(v string) bool {
			volume, dir, _ := strings.Cut(v, ":")
			return compose.Volumes != nil && hasKey(compose.Volumes, volume) && dir == opts.StoreDir
		}) {
			t.Errorf("%s: %s volumes %v: the store directory %s must be a named volume", file, name, nats.Volumes, opts.StoreDir)
		}
		if hc := strings.Join(nats.Healthcheck.Test, " "); opts.HTTPPort == 0 || !strings.Contains(hc, ":"+strconv.Itoa(opts.HTTPPort)+"/healthz") {
			t.Errorf("%s: %s health check %q does not probe its monitoring port %d", file, name, hc, opts.HTTPPort)
		}
		checkHealthTimings(t, name, nats)
	}

	for _, name := range stack.connectors {
		t.Run(name, func(t *testing.T) {
			checkComposeConnector(t, stack, file, name, extra)
		})
	}
	return stack
}

// The cluster stack is a cluster: three NATS nodes with distinct names in
// one cluster, each routing to every node's cluster port; three connector
// replicas of one configuration (only CONNECTOR_REPLICA differs, and it is
// distinct), each listing every node in NATS_URL, with every stream and KV
// bucket replicated three times.
func TestComposeClusterIsThreeNodesAndReplicas(t *testing.T) {
	stack := checkComposeFile(t, composeCluster, func(t *testing.T, name string, cfg Config) {
		if cfg.KVReplicas != 3 {
			t.Errorf("%s: CONNECTOR_KV_REPLICAS=%d, want 3", name, cfg.KVReplicas)
		}
		streams, err := retention(builtinKinds())
		if err != nil {
			t.Fatal(err)
		}
		for _, spec := range subjects.Streams(subjectKinds(builtinKinds())...) {
			if r := streams(spec); r.Replicas != 3 {
				t.Errorf("%s: stream %s has %d replicas, want 3 (STREAM_%s_REPLICAS)", name, spec.Name, r.Replicas, spec.Name)
			}
		}
		if n := len(strings.Split(cfg.NATSConfig.URL, ",")); n != 3 {
			t.Errorf("%s: NATS_URL %s lists %d servers, want the three nodes", name, cfg.NATSConfig.URL, n)
		}
	})
	compose := stack.compose
	if compose.Name == "" || compose.Name == readCompose(t).Name {
		t.Errorf("%s: project name %q must be set and differ from %s's, so that one stack never takes the other's containers", composeCluster, compose.Name, composeLocal)
	}
	if len(stack.nats) != 3 || len(stack.connectors) < 2 || len(stack.connectors) > 3 {
		t.Fatalf("%s has NATS services %v and connectors %v, want 3 nodes and 2 or 3 replicas", composeCluster, stack.nats, stack.connectors)
	}

	var wantRoutes []string
	for _, name := range stack.nats {
		wantRoutes = append(wantRoutes, net.JoinHostPort(name, strconv.Itoa(stack.natsOpts[name].Cluster.Port)))
	}
	names, clusters := map[string]bool{}, map[string]bool{}
	for _, name := range stack.nats {
		opts, svc := stack.natsOpts[name], compose.Services[name]
		names[opts.ServerName] = true
		clusters[opts.Cluster.Name] = true
		if opts.Cluster.Port == 0 || !slices.Contains(svc.Expose, strconv.Itoa(opts.Cluster.Port)) {
			t.Errorf("%s: cluster port %d is not exposed (%v)", name, opts.Cluster.Port, svc.Expose)
		}
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.Host)
		}
		if slices.Sort(routes); !slices.Equal(routes, wantRoutes) {
			t.Errorf("%s routes to %v, want every node's cluster port %v", name, routes, wantRoutes)
		}
		if hc := strings.Join(svc.Healthcheck.Test, " "); strings.Contains(hc, "js-enabled-only") {
			t.Errorf("%s health check %q: a node is healthy once it is a current cluster member (plain /healthz)", name, hc)
		}
	}
	if len(names) != 3 || names[""] || len(clusters) != 1 || clusters[""] {
		t.Errorf("node names %v and cluster names %v: want three distinct names in one named cluster", slices.Collect(maps.Keys(names)), slices.Collect(maps.Keys(clusters)))
	}

	replicas := map[string]bool{}
	first := compose.Services[stack.connectors[0]].Environment
	for _, name := range stack.connectors {
		env := compose.Services[name].Environment
		replicas[env["CONNECTOR_REPLICA"]] = true
		if !maps.EqualFunc(withoutReplica(env), withoutReplica(first), func(a, b string) bool { return a == b }) {
			t.Errorf("%s's configuration differs from %s's beyond CONNECTOR_REPLICA", name, stack.connectors[0])
		}
	}
	if len(replicas) != len(stack.connectors) || replicas[""] {
		t.Errorf("CONNECTOR_REPLICA values %v: each replica needs its own", slices.Collect(maps.Keys(replicas)))
	}
}

// withoutReplica is a connector environment without CONNECTOR_REPLICA.
func withoutReplica(env map[string]string) map[string]string {
	out := maps.Clone(env)
	delete(out, "CONNECTOR_REPLICA")
	return out
}

// natsCommandOptions parses a nats service's command with nats-server's own
// command line parser (the image's entrypoint runs nats-server with it).
func natsCommandOptions(t *testing.T, command []string) *server.Options {
	t.Helper()
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	none := func() {}
	opts, err := server.ConfigureOptions(fs, command, none, none, none)
	if err != nil || opts == nil {
		t.Fatalf("nats-server %v: %v", command, err)
	}
	return opts
}

// natsClientPort is the client port of a nats-server (4222 unless -p says).
func natsClientPort(opts *server.Options) string {
	if opts.Port == 0 {
		return strconv.Itoa(server.DEFAULT_PORT)
	}
	return strconv.Itoa(opts.Port)
}

// checkComposeConnector checks one `connector run` service: its environment
// loads and validates, it reaches every NATS service and simulator it names
// on their ports, it waits for them, and its health check probes /readyz.
func checkComposeConnector(t *testing.T, stack composeStack, file, name string, extra func(t *testing.T, name string, cfg Config)) {
	compose := stack.compose
	conn := compose.Services[name]
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
		t.Fatalf("%s environment: %v", name, err)
	}
	if !strings.Contains(summary, "sources lasersell, openstream") {
		t.Fatalf("%s would run %q, want both sources", name, summary)
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
		t.Errorf("%s serves HTTP on %s but publishes %v", name, cfg.HTTPAddr, conn.Ports)
	}
	if hc := conn.Healthcheck.Test; len(hc) < 4 || !strings.HasSuffix(hc[len(hc)-1], ":"+httpPort+"/readyz") {
		t.Errorf("%s health check %v must probe /readyz on port %s", name, hc, httpPort)
	}
	// Every NATS_URL entry is a NATS service's client port, and the
	// connector waits for every NATS service to be healthy.
	for _, raw := range strings.Split(cfg.NATSConfig.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			t.Errorf("NATS_URL entry %s: %v", raw, err)
			continue
		}
		opts := stack.natsOpts[u.Hostname()]
		if opts == nil || u.Port() != natsClientPort(opts) || !slices.Contains(containerPorts(t, compose.Services[u.Hostname()].Ports), u.Port()) {
			t.Errorf("NATS_URL entry %s does not reach a NATS service's client port", raw)
		}
	}
	for _, nats := range stack.nats {
		if conn.DependsOn[nats].Condition != "service_healthy" {
			t.Errorf("%s must wait for %s to be healthy, has %q", name, nats, conn.DependsOn[nats].Condition)
		}
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
		t.Fatalf("%s dials %v, want the three simulators", name, targets)
	}
	for host, port := range targets {
		if stack.simPorts[host] != port {
			t.Errorf("%s dials %s:%s, but service %s listens on port %q", name, host, port, host, stack.simPorts[host])
		}
		if conn.DependsOn[host].Condition == "" {
			t.Errorf("%s does not depend on %s", name, host)
		}
	}
	for dep, d := range conn.DependsOn {
		if d.Condition == "service_healthy" && len(compose.Services[dep].Healthcheck.Test) == 0 {
			t.Errorf("%s waits for %s to be healthy, but it has no health check", name, dep)
		}
	}
	if extra != nil {
		extra(t, name, cfg)
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
