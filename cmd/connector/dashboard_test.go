package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/jetbridge/connector/connector"
)

// recordingRegisterer keeps the collectors registered on it.
type recordingRegisterer struct{ collectors []prometheus.Collector }

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
}

func (r *recordingRegisterer) Unregister(prometheus.Collector) bool { return false }

// exportedMetrics are the names of every series the connector defines,
// read from the collectors' descriptions (a vector exports nothing before
// its first label values, so /metrics alone would miss some).
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := &recordingRegisterer{}
	connector.NewMetrics(reg)
	connector.NewFleetMetrics(reg)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	out := map[string]bool{}
	for _, c := range reg.collectors {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				out[m[1]] = true
			}
		}
	}
	if len(out) < 15 {
		t.Fatalf("only %d metrics described: %v", len(out), out)
	}
	return out
}

// The local stack's Grafana dashboard queries only series the connector
// exports (histograms through _bucket, _sum or _count), through the
// provisioned data source, and the compose stack runs Prometheus scraping
// the connector and Grafana provisioned with both.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	raw, err := os.ReadFile("../../deploy/grafana/dashboards/connector.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Datasources []struct {
			UID, URL string
		}
	}
	rawDS, err := os.ReadFile("../../deploy/grafana/provisioning/datasources/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(rawDS, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("datasources: %+v %v", ds, err)
	}
	series := regexp.MustCompile(`\bconnector_[a-z0-9_]+`)
	queried := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Datasource.UID != ds.Datasources[0].UID {
			t.Errorf("panel %q uses data source %q, not the provisioned %q", p.Title, p.Datasource.UID, ds.Datasources[0].UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, name := range series.FindAllString(q.Expr, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(name, suffix); ok && exported[trimmed] {
						base = trimmed
					}
				}
				if !exported[base] {
					t.Errorf("panel %q queries %s, which the connector does not export", p.Title, name)
				}
				queried[base] = true
			}
		}
	}
	for _, want := range []string{"connector_lane_depth", "connector_lane_dropped_total", "connector_publish_latency_seconds",
		"connector_publish_errors_total", "connector_upstream_reconnects_total", "connector_commands_total", "connector_lease_held"} {
		if !queried[want] {
			t.Errorf("the dashboard shows no %s", want)
		}
	}

	compose := readCompose(t)
	prom, graf := compose.Services["prometheus"], compose.Services["grafana"]
	if !strings.HasPrefix(prom.Image, "prom/prometheus:v") || !strings.HasPrefix(graf.Image, "grafana/grafana:") || strings.HasSuffix(graf.Image, ":latest") {
		t.Errorf("prometheus %q and grafana %q must be pinned images", prom.Image, graf.Image)
	}
	var scrape struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	rawProm, err := os.ReadFile("../../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(rawProm, &scrape); err != nil || len(scrape.ScrapeConfigs) == 0 || len(scrape.ScrapeConfigs[0].StaticConfigs) == 0 {
		t.Fatalf("prometheus.yml: %v", err)
	}
	_, httpPort, _ := strings.Cut(compose.Services["connector"].Environment["CONNECTOR_HTTP_ADDR"], ":")
	if target := scrape.ScrapeConfigs[0].StaticConfigs[0].Targets; !slices.Contains(target, "connector:"+httpPort) {
		t.Errorf("prometheus scrapes %v, the connector serves /metrics on connector:%s", target, httpPort)
	}
	for _, mount := range []string{"./deploy/prometheus/prometheus.yml:", "./deploy/grafana/provisioning:", "./deploy/grafana/dashboards:"} {
		if !slices.ContainsFunc(append(prom.Volumes, graf.Volumes...), func(v string) bool { return strings.HasPrefix(v, mount) }) {
			t.Errorf("compose mounts no %s...", mount)
		}
	}
}
