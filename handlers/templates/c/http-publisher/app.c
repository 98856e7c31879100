// The {{name}} HTTP publisher: jetwasm calls exports_wasi_http_incoming_handler_handle for each
// request on its route (the `http` key of its [[publisher]] table) and sends back the response
// set here. ./build.sh generates http_publisher.h (the WIT types and imports) from wit/ at build
// time.
//
// It publishes the request body as it is and answers, with a JSON body:
// - 202 {"stream": ..., "seq": ...} once a stream has stored it;
// - 413 when the body exceeds 1 MiB, 403 when the subject is denied, 503 when no stream
//   captures it or NATS is unavailable, 504 when the stream did not confirm in time, and
//   400 or 429 for the other publish errors: {"error": ...}.
//
// Config key: subject (default orders.created).
//
// Memory: what we pass to imports stays ours; what they return becomes ours (free it).
// Resources we own (the request, bodies, streams) are ours to drop, a stream before its body.
#define _GNU_SOURCE // asprintf
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_publisher.h"

#define MAX_BODY (1024 * 1024) // the largest request body accepted, in bytes
#define STR(s) (int)(s).len, (const char *)(s).ptr // a WIT string, for printf's "%.*s"

// Logs a warning.
static void warn(const char *line) {
    http_publisher_string_t text = {(uint8_t *)line, strlen(line)};
    jetwasm_runtime_log_log(JETWASM_RUNTIME_LOG_LEVEL_WARN, &text);
}

// The configuration value for key as a new C string (free it), or NULL when it is not set.
static char *config_get(const char *key) {
    http_publisher_string_t name, value;
    http_publisher_string_set(&name, key);
    if (!jetwasm_runtime_config_get(&name, &value)) return NULL;
    char *s = strndup((const char *)value.ptr, value.len);
    http_publisher_string_free(&value);
    return s;
}

// The len bytes at text as a JSON string: a new C string (free it).
static char *json_string(const uint8_t *text, size_t len) {
    char *out = malloc(len * 6 + 3), *p = out; // at worst every byte becomes \u00XX
    if (!out) abort();
    *p++ = '"';
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '"' || text[i] == '\\') *p++ = '\\';
        if (text[i] < 0x20)
            p += sprintf(p, "\\u%04x", text[i]);
        else
            *p++ = (char)text[i];
    }
    strcpy(p, "\"");
    return out;
}

// {"error": reason} as a new C string (free it).
static char *error_json(const char *reason) {
    char *quoted = json_string((const uint8_t *)reason, strlen(reason)), *json;
    if (asprintf(&json, "{\"error\":%s}", quoted) < 0) abort();
    free(quoted);
    return json;
}

// The HTTP status for a publish error; sets *reason to why (a new C string: free it).
static int describe(const jetwasm_runtime_publish_publish_error_t *e, char **reason) {
    int status = 429, n;
    switch (e->tag) {
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_DENIED:
        status = 403;
        n = asprintf(reason, "publishing to %.*s is denied", STR(e->val.denied));
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_NO_STREAM:
        status = 503;
        n = asprintf(reason, "no stream captures %.*s", STR(e->val.no_stream));
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_UNAVAILABLE:
        status = 503;
        n = asprintf(reason, "unavailable: %.*s", STR(e->val.unavailable));
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_TIMEOUT:
        status = 504;
        n = asprintf(reason, "the stream did not confirm in time");
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_TOO_LARGE:
        status = 413;
        n = asprintf(reason, "the body exceeds %llu bytes", (unsigned long long)e->val.too_large);
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_INVALID:
        status = 400;
        n = asprintf(reason, "invalid: %.*s", STR(e->val.invalid));
        break;
    default:
        n = asprintf(reason, "publish quota exceeded");
    }
    if (n < 0) abort();
    return status;
}

// Publishes the body; returns the status to answer and sets *json to the answer (free it).
static int publish_body(uint8_t *data, size_t len, char **json) {
    char *setting = config_get("subject");
    const char *subject = setting ? setting : "orders.created";
    http_publisher_string_t to;
    http_publisher_string_set(&to, subject);
    http_publisher_list_u8_t payload = {data, len};
    jetwasm_runtime_publish_list_header_t headers = {NULL, 0};
    jetwasm_runtime_publish_publish_ack_t ack;
    jetwasm_runtime_publish_publish_error_t e;
    int status = 202;
    // Waits until a stream stores it. msg-id NULL: the host derives a new one per request. Pass
    // a key the client sends (e.g. an Idempotency-Key header) instead, and a retried request is
    // stored once.
    if (jetwasm_runtime_publish_publish(&to, &payload, &headers, NULL, &ack, &e)) {
        char *stream = json_string(ack.stream.ptr, ack.stream.len);
        if (asprintf(json, "{\"stream\":%s,\"seq\":%llu}", stream, (unsigned long long)ack.seq) < 0)
            abort();
        free(stream);
        jetwasm_runtime_publish_publish_ack_free(&ack);
    } else {
        char *reason, *line;
        status = describe(&e, &reason);
        if (asprintf(&line, "publishing to %s failed: %s", subject, reason) < 0) abort();
        warn(line);
        *json = error_json(reason);
        free(line);
        free(reason);
        jetwasm_runtime_publish_publish_error_free(&e);
    }
    free(setting);
    return status;
}

// Reads the whole request body into *data (malloc'd: free it) and *len. Returns 0, or the status
// to answer instead: 413 when the body exceeds MAX_BODY, 400 when it cannot be read.
static int read_body(wasi_http_types_own_incoming_request_t request, uint8_t **data, size_t *len) {
    wasi_http_types_own_incoming_body_t body;
    wasi_io_streams_own_input_stream_t stream;
    if (!wasi_http_types_method_incoming_request_consume(
            wasi_http_types_borrow_incoming_request(request), &body))
        return 400;
    if (!wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                     &stream)) {
        wasi_http_types_incoming_body_drop_own(body);
        return 400;
    }
    int status = 0;
    for (;;) {
        http_publisher_list_u8_t chunk;
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_input_stream_blocking_read(
                wasi_io_streams_borrow_input_stream(stream), 64 * 1024, &chunk, &err)) {
            if (err.tag != WASI_IO_STREAMS_STREAM_ERROR_CLOSED) status = 400; // closed: the end
            wasi_io_streams_stream_error_free(&err);
            break;
        }
        if (*len + chunk.len > MAX_BODY) {
            status = 413;
        } else if (chunk.len > 0) {
            if (!(*data = realloc(*data, *len + chunk.len))) abort();
            memcpy(*data + *len, chunk.ptr, chunk.len);
            *len += chunk.len;
        }
        http_publisher_list_u8_free(&chunk);
        if (status) break;
    }
    wasi_io_streams_input_stream_drop_own(stream); // a stream goes before its body
    wasi_http_types_incoming_body_drop_own(body);
    return status;
}

// Sends the response: status, with json as its body.
static void respond(wasi_http_types_own_response_outparam_t out, int status, const char *json) {
    wasi_http_types_tuple2_field_name_field_value_t content_type = {
        {(uint8_t *)"content-type", 12}, {(uint8_t *)"application/json", 16}};
    wasi_http_types_list_tuple2_field_name_field_value_t entries = {&content_type, 1};
    wasi_http_types_own_fields_t headers;
    wasi_http_types_header_error_t header_error;
    if (!wasi_http_types_static_fields_from_list(&entries, &headers, &header_error)) abort();
    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(headers);
    wasi_http_types_borrow_outgoing_response_t borrowed =
        wasi_http_types_borrow_outgoing_response(response);
    wasi_http_types_own_outgoing_body_t body;
    if (!wasi_http_types_method_outgoing_response_set_status_code(borrowed, status) ||
        !wasi_http_types_method_outgoing_response_body(borrowed, &body))
        abort();
    wasi_http_types_result_own_outgoing_response_error_code_t result = {.val.ok = response};
    wasi_http_types_static_response_outparam_set(out, &result); // the status and headers go now

    wasi_io_streams_own_output_stream_t stream;
    if (!wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body),
                                                    &stream))
        abort();
    size_t len = strlen(json);
    for (size_t at = 0; at < len; at += 4096) { // at most 4096 bytes per call
        http_publisher_list_u8_t chunk = {(uint8_t *)json + at, len - at < 4096 ? len - at : 4096};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                wasi_io_streams_borrow_output_stream(stream), &chunk, &err)) {
            warn("writing the response failed");
            wasi_io_streams_stream_error_free(&err);
            break;
        }
    }
    wasi_io_streams_output_stream_drop_own(stream); // a stream goes before its body is finished
    wasi_http_types_error_code_t error;
    if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &error)) {
        warn("finishing the response failed");
        wasi_http_types_error_code_free(&error);
    }
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
    // Also there: wasi_http_types_method_incoming_request_method, ..._path_with_query and
    // ..._headers, on wasi_http_types_borrow_incoming_request(request).
    uint8_t *data = NULL;
    size_t len = 0;
    char *json;
    int status = read_body(request, &data, &len);
    wasi_http_types_incoming_request_drop_own(request);
    if (status == 413)
        json = error_json("the body exceeds 1048576 bytes");
    else if (status == 400)
        json = error_json("reading the request body failed");
    else
        status = publish_body(data, len, &json);
    respond(response_out, status, json);
    free(json);
    free(data);
}
