package main

import (
	"strings"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell"
	"github.com/jetbridge/connector/connector/openstream"
	"github.com/jetbridge/connector/subjects"
)

// configuredSources reads each source's variables and returns the factories of
// the sources selected by CONNECTOR_SOURCES.
func configuredSources(cfg Config) ([]sourceFactory, error) {
	ls := lasersell.DefaultConfig()
	if err := loadEnv(lasersell.EnvPrefix, &ls); err != nil {
		return nil, err
	}
	os := openstream.Defaults()
	if err := loadEnv("", &os); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	switch strings.TrimSpace(cfg.Sources) {
	case "", "auto":
		want[subjects.KindLaserSell] = ls.Configured()
		want[subjects.KindOpenStream] = os.Robots != ""
	default:
		for _, k := range strings.Split(cfg.Sources, ",") {
			k = strings.TrimSpace(k)
			if k != subjects.KindLaserSell && k != subjects.KindOpenStream {
				return nil, badConfig("CONNECTOR_SOURCES: unknown source %q (lasersell, openstream or auto)", k)
			}
			want[k] = true
		}
	}
	var out []sourceFactory
	if want[subjects.KindLaserSell] {
		if err := ls.Validate(); err != nil {
			return nil, badConfig("%v", err)
		}
		out = append(out, laserSellFactory(ls))
	}
	if want[subjects.KindOpenStream] {
		if os.Robots == "" {
			return nil, badConfig("OPENSTREAM_ROBOTS is empty but CONNECTOR_SOURCES asks for openstream")
		}
		if err := os.Validate(); err != nil {
			return nil, badConfig("%v", err)
		}
		out = append(out, openStreamFactory(os))
	}
	if len(out) == 0 {
		return nil, badConfig("no source is configured: set LASERSELL_API_KEY (or LASERSELL_API_KEY_FILE) and/or OPENSTREAM_ROBOTS, or CONNECTOR_SOURCES")
	}
	return out, nil
}

func laserSellFactory(cfg lasersell.Config) sourceFactory {
	return sourceFactory{kind: subjects.KindLaserSell, build: func(rt *connector.Runtime) ([]connector.Source, error) {
		h, err := rt.NewHost(subjects.KindLaserSell, cfg.Session, cfg.LaneSizes())
		if err != nil {
			return nil, err
		}
		src, err := lasersell.New(cfg, h)
		if err != nil {
			return nil, err
		}
		return []connector.Source{src}, nil
	}}
}

func openStreamFactory(cfg openstream.Config) sourceFactory {
	return sourceFactory{kind: subjects.KindOpenStream, build: func(rt *connector.Runtime) ([]connector.Source, error) {
		robots, err := openstream.NewAll(cfg, rt)
		if err != nil {
			return nil, err
		}
		out := make([]connector.Source, len(robots))
		for i, r := range robots {
			out[i] = r
		}
		return out, nil
	}}
}
