package connector_test

import (
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
)

type DefaultsEmbedded struct {
	Inner string `envconfig:"DEFTEST_INNER" default:"in"`
}

type defaultsSample struct {
	DefaultsEmbedded
	Name    string        `envconfig:"DEFTEST_NAME" default:"x"`
	Wait    time.Duration `envconfig:"DEFTEST_WAIT" default:"150ms"`
	N       int           `envconfig:"DEFTEST_N" default:"1024"`
	U       uint64        `envconfig:"DEFTEST_U" default:"7"`
	F       float64       `envconfig:"DEFTEST_F" default:"2.5"`
	On      bool          `envconfig:"DEFTEST_ON" default:"true"`
	List    []string      `envconfig:"DEFTEST_LIST" default:"a,b"`
	Untaged string        `envconfig:"DEFTEST_UNTAGGED"`
}

// Defaults must agree with what envconfig makes of an empty environment: the
// struct tags are the one place defaults are written.
func TestDefaultsAgreeWithEnvconfig(t *testing.T) {
	var fromTags, fromEnv defaultsSample
	if err := connector.Defaults(&fromTags); err != nil {
		t.Fatal(err)
	}
	if err := envconfig.Process("", &fromEnv); err != nil {
		t.Fatal(err)
	}
	if fromTags.Name != "x" || fromTags.Wait != 150*time.Millisecond || fromTags.N != 1024 || fromTags.U != 7 ||
		fromTags.F != 2.5 || !fromTags.On || len(fromTags.List) != 2 || fromTags.Inner != "in" {
		t.Fatalf("defaults %+v", fromTags)
	}
	if fromTags.Name != fromEnv.Name || fromTags.Wait != fromEnv.Wait || fromTags.N != fromEnv.N || fromTags.Inner != fromEnv.Inner ||
		len(fromTags.List) != len(fromEnv.List) {
		t.Fatalf("defaults %+v differ from envconfig's %+v", fromTags, fromEnv)
	}
	if err := connector.Defaults(fromTags); err == nil {
		t.Fatal("a non-pointer was accepted")
	}
	var bad struct {
		N int `default:"many"`
	}
	if err := connector.Defaults(&bad); err == nil {
		t.Fatal("a bad default was accepted")
	}
}
