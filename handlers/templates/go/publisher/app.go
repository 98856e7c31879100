// Package export_wit_world is the {{name}} publisher: jetwasm calls OnTick on every firing of
// its timer. ./build.sh generates the rest of the Go module (the bindings) from wit/ at build
// time.
//
// Config key: subject (default ticks).
package export_wit_world

import (
	"fmt"

	config "wit_component/jetwasm_runtime_config"
	publish "wit_component/jetwasm_runtime_publish"
	types "wit_component/jetwasm_runtime_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// OnTick publishes one event per tick. An error is logged and counted by the host.
func OnTick(tick types.Tick) witTypes.Result[witTypes.Unit, string] {
	subject := config.Get("subject").SomeOr("ticks")
	// (encoding/json works too; it adds about 2 MB to the component.)
	payload := fmt.Sprintf(`{"tick":%d,"now_ms":%d}`, tick.Seq, tick.NowMs)
	// No message id: the host derives one from the firing, so it is stored once.
	result := publish.Publish(subject, []byte(payload), nil, witTypes.None[string]())
	if result.IsErr() {
		reason := fmt.Sprintf("publishing to %s failed: %s", subject, describe(result.Err()))
		return witTypes.Err[witTypes.Unit](reason)
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

// describe renders a publish error.
func describe(e types.PublishError) string {
	switch e.Tag() {
	case types.PublishError_Denied:
		return "denied subject " + e.Denied()
	case types.PublishError_Invalid:
		return "invalid: " + e.Invalid()
	case types.PublishError_NoStream:
		return "no stream for subject " + e.NoStream()
	case types.PublishError_Timeout:
		return "timeout"
	case types.PublishError_TooLarge:
		return fmt.Sprintf("too large (limit %d bytes)", e.TooLarge())
	case types.PublishError_Unavailable:
		return "unavailable: " + e.Unavailable()
	default:
		return "quota exceeded"
	}
}
