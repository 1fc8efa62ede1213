package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
)

// UserProps is a propagation carrier over MQTT v5 user properties, given
// as key/value pairs, so trace context rides in command and result
// envelopes' packets.
type UserProps struct {
	Keys, Values []string
}

func (u *UserProps) Get(key string) string {
	for i, k := range u.Keys {
		if k == key {
			return u.Values[i]
		}
	}
	return ""
}

func (u *UserProps) Set(key, value string) {
	for i, k := range u.Keys {
		if k == key {
			u.Values[i] = value
			return
		}
	}
	u.Keys = append(u.Keys, key)
	u.Values = append(u.Values, value)
}

// Inject writes ctx's trace context into user properties.
func Inject(ctx context.Context) *UserProps {
	u := &UserProps{}
	otel.GetTextMapPropagator().Inject(ctx, carrier{u})
	return u
}

// Extract reads trace context from user properties into ctx.
func Extract(ctx context.Context, u *UserProps) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, carrier{u})
}

type carrier struct{ u *UserProps }

func (c carrier) Get(key string) string { return c.u.Get(key) }
func (c carrier) Set(key, value string) { c.u.Set(key, value) }
func (c carrier) Keys() []string        { return c.u.Keys }
