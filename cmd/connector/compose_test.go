package main

import (
	"os"
	"testing"

	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"
)

// docker compose cannot run here, so check what can be checked: every service's
// command and environment is accepted by the code the tests exercise.
func TestComposeCommandsAndEnvironmentAreValid(t *testing.T) {
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Image       string            `yaml:"image"`
		} `yaml:"services"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	sims, runs := 0, 0
	for name, svc := range compose.Services {
		if svc.Image != "" {
			continue // third-party image (nats)
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
			sims++
		case "run":
			for k, v := range svc.Environment {
				if k == "LASERSELL_API_KEY_FILE" {
					v = "../../" + compose.Secrets["lasersell_api_key"].File[2:]
				}
				t.Setenv(k, v)
			}
			cfg, err := loadConfig()
			if err != nil {
				t.Fatalf("service %s environment: %v", name, err)
			}
			factories, err := configuredSources(cfg)
			if err != nil {
				t.Fatalf("service %s sources: %v", name, err)
			}
			if len(factories) != 2 {
				t.Fatalf("service %s runs %d sources, want both", name, len(factories))
			}
			runs++
		default:
			t.Errorf("service %s: unknown command %v", name, svc.Command)
		}
	}
	if sims != 3 || runs != 1 {
		t.Fatalf("compose has %d simulators and %d connectors, want 3 and 1", sims, runs)
	}
}
