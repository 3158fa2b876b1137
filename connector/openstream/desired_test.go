package openstream

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/jetbridge/connector/connector/connectortest"
)

// The desired monitors in KV have the documented shape (monitor, origin,
// updated_at); a bare recipe stored by an earlier version is still read;
// deleting the seeded mark makes the configuration win again at the next
// start, replacing what KV held.
func TestDesiredMonitorsShapeLegacyAndReseed(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	dir := t.TempDir()
	rc := robotConfig(s.Addr())
	f := start(t, s, rc, testConfig(), connectortest.Options{StoreDir: dir})
	f.waitData("joints", 2)
	f.mustOK("monitor", `{"name":"pose","url":"/project/robot/po_cur","period_ms":7}`)

	var doc struct {
		Monitor   *Recipe `json:"monitor"`
		Origin    string  `json:"origin"`
		UpdatedAt string  `json:"updated_at"`
	}
	for name, origin := range map[string]string{"joints": "env", "pose": "command:monitor"} {
		raw, err := f.robot.desiredKV.Get(t.Context(), keyMonitorPrefix+name)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &doc); err != nil || doc.Monitor == nil || doc.Origin != origin || doc.UpdatedAt == "" {
			t.Fatalf("desired %s: %s", name, raw)
		}
	}
	// An earlier version's bare recipe, and the seeded mark removed by an operator.
	legacy := []byte(`{"url":"/project/robot/po_cur","method":"GET","period_ms":9}`)
	if err := f.robot.desiredKV.Put(t.Context(), keyMonitorPrefix+"pose", legacy); err != nil {
		t.Fatal(err)
	}
	if rec, err := decodeDesired(legacy); err != nil || rec.PeriodMS != 9 {
		t.Fatalf("legacy recipe read as %+v, %v", rec, err)
	}
	if err := f.robot.desiredKV.Delete(t.Context(), keySeeded); err != nil {
		t.Fatal(err)
	}
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	f.env.Server.Stop()
	waitSim(t, s, "sessions closed", func() bool { return s.Active() == 0 })

	// Re-seeded: only the configured joints monitor, pose is gone from KV.
	f2 := start(t, s, rc, testConfig(), connectortest.Options{StoreDir: dir})
	f2.waitData("joints", f2.dataCount("joints")+3)
	waitSim(t, s, "one monitor", func() bool { return monitorsActive(s) == 1 })
	if _, err := f2.robot.desiredKV.Get(t.Context(), keyMonitorPrefix+"pose"); err == nil {
		t.Fatal("re-seeding kept a monitor the configuration does not have")
	}
	if raw, err := f2.robot.desiredKV.Get(t.Context(), keySeeded); err != nil || len(bytes.TrimSpace(raw)) == 0 {
		t.Fatalf("seeded mark not written again: %s %v", raw, err)
	}
}
