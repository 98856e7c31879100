// Package export_wasi_http_incoming_handler is the {{name}} HTTP publisher: jetwasm calls Handle
// for each request on its route (the `http` key of its `[[publisher]]` table) and sends back the
// response set here. ./build.sh generates the rest of the Go module (the bindings) from wit/ at
// build time.
//
// It publishes the request body as it is and answers, with a JSON body:
//   - 202 {"stream": ..., "seq": ...} once a stream has stored it;
//   - 413 when the body exceeds 1 MiB, 403 when the subject is denied, 503 when no stream
//     captures it or NATS is unavailable, 504 when the stream did not confirm in time, and
//     400 or 429 for the other publish errors: {"error": ...}.
//
// Config key: subject, where the bodies go (default orders.created).
package export_wasi_http_incoming_handler

import (
	"fmt"
	"runtime/debug"
	"strings"

	config "wit_component/jetwasm_runtime_config"
	log "wit_component/jetwasm_runtime_log"
	publish "wit_component/jetwasm_runtime_publish"
	types "wit_component/jetwasm_runtime_types"
	http "wit_component/wasi_http_types"
	streams "wit_component/wasi_io_streams"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// maxBody is the largest request body accepted, in bytes.
const maxBody = 1 << 20

func init() {
	// No automatic garbage collection: one could start while the host hands us a string or a
	// list (inside cabi_realloc), where Go's collector calls an import, which traps ("cannot
	// leave component instance"). Each request gets a fresh instance, whose garbage goes with
	// it; call runtime.GC() in Handle yourself if a request allocates a lot.
	debug.SetGCPercent(-1)
}

// Handle answers one request. Also there: request.Method(), request.PathWithQuery(),
// request.Headers().
func Handle(request *http.IncomingRequest, responseOut *http.ResponseOutparam) {
	body, ok := readBody(request)
	if !ok {
		respond(responseOut, 413, errorJSON(fmt.Sprintf("the body exceeds %d bytes", maxBody)))
		return
	}
	status, json := publishBody(body)
	respond(responseOut, status, json)
}

// publishBody publishes body; returns the status and JSON answer to send.
func publishBody(body []byte) (uint16, string) {
	subject := config.Get("subject").SomeOr("orders.created")
	// Waits until a stream stores it. No message id: the host derives a new one per request.
	// Pass a key the client sends (e.g. an Idempotency-Key header) instead, and a retried
	// request is stored once.
	result := publish.Publish(subject, body, nil, witTypes.None[string]())
	if result.IsOk() {
		ack := result.Ok()
		return 202, fmt.Sprintf(`{"stream":%s,"seq":%d}`, jsonString(ack.Stream), ack.Seq)
	}
	status, reason := describe(result.Err())
	log.Log(log.Level_Warn, fmt.Sprintf("publishing to %s failed: %s", subject, reason))
	return status, errorJSON(reason)
}

// describe gives the HTTP status and reason for a publish error.
func describe(e types.PublishError) (uint16, string) {
	switch e.Tag() {
	case types.PublishError_Denied:
		return 403, "publishing to " + e.Denied() + " is denied"
	case types.PublishError_NoStream:
		return 503, "no stream captures " + e.NoStream()
	case types.PublishError_Unavailable:
		return 503, "unavailable: " + e.Unavailable()
	case types.PublishError_Timeout:
		return 504, "the stream did not confirm in time"
	case types.PublishError_TooLarge:
		return 413, fmt.Sprintf("the body exceeds %d bytes", e.TooLarge())
	case types.PublishError_Invalid:
		return 400, "invalid: " + e.Invalid()
	default:
		return 429, "publish quota exceeded"
	}
}

// readBody reads the whole request body; false when it exceeds maxBody.
func readBody(request *http.IncomingRequest) ([]byte, bool) {
	body := request.Consume().Ok()
	defer body.Drop()
	stream := body.Stream().Ok()
	defer stream.Drop() // deferred calls run last first: a stream goes before its body
	var data []byte
	for len(data) <= maxBody {
		chunk := stream.BlockingRead(64 * 1024)
		if chunk.IsErr() {
			if chunk.Err().Tag() == streams.StreamError_Closed {
				return data, true // the end of the body
			}
			panic("reading the request body failed") // a panic traps: the host answers 500
		}
		data = append(data, chunk.Ok()...)
	}
	return nil, false
}

// respond sends json as the body of a response with status.
func respond(responseOut *http.ResponseOutparam, status uint16, json string) {
	headers := http.FieldsFromList([]witTypes.Tuple2[string, []byte]{
		{F0: "content-type", F1: []byte("application/json")},
	}).Ok()
	response := http.MakeOutgoingResponse(headers)
	response.SetStatusCode(status)
	body := response.Body().Ok()
	// The status and headers go now.
	http.ResponseOutparamSet(responseOut, witTypes.Ok[*http.OutgoingResponse, http.ErrorCode](response))
	stream := body.Write().Ok()
	for data := []byte(json); len(data) > 0; {
		n := min(len(data), 4096) // at most 4096 bytes per call
		if stream.BlockingWriteAndFlush(data[:n]).IsErr() {
			log.Log(log.Level_Warn, "writing the response failed")
			break
		}
		data = data[n:]
	}
	stream.Drop() // a stream goes before its body is finished
	http.OutgoingBodyFinish(body, witTypes.None[*http.Fields]())
}

// errorJSON renders {"error": reason}.
func errorJSON(reason string) string {
	return `{"error":` + jsonString(reason) + `}`
}

// jsonString renders s as a JSON string (encoding/json does too; it adds about 2 MB to the
// component).
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ':
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
