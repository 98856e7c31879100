// Package export_wit_world is the {{name}} handler: jetwasm calls Handle once per JetStream
// message and applies the disposition it returns. ./build.sh generates the rest of the Go
// module (the bindings) from wit/ at build time.
package export_wit_world

import (
	"fmt"

	log "wit_component/jetwasm_runtime_log"
	types "wit_component/jetwasm_runtime_types"
)

// Handle handles one message and says what the host should do with it.
func Handle(msg types.Message) types.Disposition {
	log.Log(log.Level_Info, fmt.Sprintf("received %s (%d bytes)", msg.Subject, len(msg.Payload)))

	// Other answers (witTypes is go.bytecodealliance.org/pkg/wit/types):
	//   retry in 5s:                     types.MakeDispositionNak(witTypes.Some[uint64](5000))
	//   retry on the consumer's backoff: types.MakeDispositionNak(witTypes.None[uint64]())
	//   dead-letter, with a reason:      types.MakeDispositionTerm("unknown payload")
	//
	// Configuration, the [handler.config] table (config is wit_component/jetwasm_runtime_config):
	//   subject := config.Get("output_subject").SomeOr("results")
	//
	// Publishing, to subjects the host allows (publish is wit_component/jetwasm_runtime_publish);
	// no message id: the host derives one, so a redelivery does not publish twice:
	//   result := publish.Publish(subject, []byte("done"), nil, witTypes.None[string]())
	//   if result.IsErr() && result.Err().Tag() == types.PublishError_Denied { ... }
	// Many, with their acks awaited together (one Result per message):
	//   results := publish.PublishBatch([]types.Outgoing{{Subject: "out.a", Payload: []byte("1")}})
	//
	// Key-value state, in a bucket the config grants (`kv = ["counts"]`, declared with [[kv]]
	// in the streams spec; kv is wit_component/jetwasm_runtime_kv); Update writes only at the
	// revision read (API.md has the whole read-modify-write):
	//   got := kv.Get("counts", "c-1") // Ok(None) when absent; else .Value, .Revision
	//   written := kv.Update("counts", "c-1", []byte("2"), got.Ok().Some().Revision)
	//   if written.IsErr() && written.Err().Tag() == kv.KvError_WrongRevision {
	//       // someone wrote since: read again
	//   }
	return types.MakeDispositionAck()
}
