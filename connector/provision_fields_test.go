package connector

import (
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// TestSameManagedSettingsSeesEveryField: provisioning skips a stream whose
// settings agree (sameManagedSettings), so a change of any field that
// StreamConfig fills, or of AllowBatchPublish, must count as a difference;
// otherwise a new setting would never reach a stream that already exists.
func TestSameManagedSettingsSeesEveryField(t *testing.T) {
	spec := subjects.Streams(subjects.LaserSell())[0]
	want := StreamConfig(spec, Retention{MaxAge: time.Hour, MaxBytes: 1 << 20, Replicas: 1, Duplicates: time.Minute, Storage: "memory"})
	want.AllowBatchPublish = true
	if !sameManagedSettings(want, want) {
		t.Fatal("a configuration differs from itself")
	}
	v := reflect.ValueOf(want)
	checked := 0
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			continue // not a setting provisioning makes
		}
		changed := want
		f := reflect.ValueOf(&changed).Elem().Field(i)
		f.Set(reflect.Zero(f.Type()))
		if sameManagedSettings(changed, want) {
			t.Errorf("a stream whose %s differs counts as up to date", v.Type().Field(i).Name)
		}
		checked++
	}
	if checked < 9 {
		t.Fatalf("only %d fields set: the configuration under test is not what provisioning makes", checked)
	}
	// The three StreamConfig sets to their zero values here, changed the other way.
	other := want
	other.Retention = jetstream.InterestPolicy
	if sameManagedSettings(other, want) {
		t.Error("a stream whose Retention differs counts as up to date")
	}
	other = want
	other.Discard = jetstream.DiscardNew
	if sameManagedSettings(other, want) {
		t.Error("a stream whose Discard differs counts as up to date")
	}
	other = want
	other.PersistMode = jetstream.AsyncPersistMode
	if sameManagedSettings(other, want) {
		t.Error("a stream whose PersistMode differs counts as up to date")
	}
}
