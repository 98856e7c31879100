// The example handler for the ORDERS stream: validates each order, publishes a processed-order
// event, and acks. Malformed orders are dead-lettered; busy inventory is retried after a delay.
//
// Config keys: output_subject (default orders.processed) and retry_delay_ms (default 2000).
//
// Memory, as wit-bindgen's C bindings have it: the message passed to the export belongs to
// us (we free it); a term reason we return is freed by the bindings after the call, so it must
// come from malloc; arguments we pass to imports stay ours; what imports return becomes ours.
#define _GNU_SOURCE // vasprintf
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h" // generated from the WIT by build.sh
#include "order.h"

#define DEFAULT_OUTPUT_SUBJECT "orders.processed"
#define DEFAULT_RETRY_DELAY_MS 2000

// For printf's "%.*s": a WIT string, which is not NUL-terminated.
#define STR(s) (int)(s).len, (const char *)(s).ptr

// Formats like printf into a new WIT string (malloc'd).
static handler_string_t vformat(const char *format, va_list args) {
    char *s;
    if (vasprintf(&s, format, args) < 0) abort();
    return (handler_string_t){(uint8_t *)s, strlen(s)};
}

static void log_at(jetwasm_runtime_log_level_t level, const char *format, ...) {
    va_list args;
    va_start(args, format);
    handler_string_t line = vformat(format, args);
    va_end(args);
    jetwasm_runtime_log_log(level, &line);
    free(line.ptr);
}

// Dead-letters the message with a reason.
static void term(handler_disposition_t *ret, const char *format, ...) {
    va_list args;
    va_start(args, format);
    ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_TERM;
    ret->val.term = vformat(format, args); // freed by the bindings after the call
    va_end(args);
}

// The configuration value for key as a new C string (free it), or NULL when it is not set.
static char *config_get(const char *key) {
    handler_string_t name, value;
    handler_string_set(&name, key);
    if (!jetwasm_runtime_config_get(&name, &value)) return NULL;
    char *s = strndup((const char *)value.ptr, value.len);
    handler_string_free(&value);
    return s;
}

// Parses a decimal u64, rejecting signs, spaces and overflow.
static bool parse_u64(const char *s, uint64_t *out) {
    uint64_t n = 0;
    if (*s == '\0') return false;
    for (; *s; s++) {
        unsigned digit = (unsigned)(*s - '0');
        if (digit > 9 || n > (UINT64_MAX - digit) / 10) return false;
        n = n * 10 + digit;
    }
    *out = n;
    return true;
}

// Logs why a publish failed (for any error but denied).
static void log_publish_error(const char *id, const jetwasm_runtime_publish_publish_error_t *e) {
    const char *what = "quota exceeded";
    handler_string_t detail = {(uint8_t *)"", 0}; // what the variants with a string carry
    switch (e->tag) {
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_INVALID:
        what = "invalid: ";
        detail = e->val.invalid;
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_NO_STREAM:
        what = "no stream for subject ";
        detail = e->val.no_stream;
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_UNAVAILABLE:
        what = "unavailable: ";
        detail = e->val.unavailable;
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_TIMEOUT:
        what = "timeout";
        break;
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_TOO_LARGE:
        log_at(JETWASM_RUNTIME_LOG_LEVEL_WARN,
               "publishing order %s failed: too large (limit %llu bytes)", id,
               (unsigned long long)e->val.too_large);
        return;
    }
    log_at(JETWASM_RUNTIME_LOG_LEVEL_WARN, "publishing order %s failed: %s%.*s", id, what,
           STR(detail));
}

static void process(const order_t *order, uint64_t stream_seq, handler_disposition_t *ret) {
    if (order->crash) { // a trap: the host redelivers with backoff, then dead-letters
        fprintf(stderr, "crash requested by order %s\n", order->id); // stderr goes to the host log
        abort();
    }

    if (order->inventory_busy) {
        char *setting = config_get("retry_delay_ms");
        uint64_t delay;
        if (!setting || !parse_u64(setting, &delay)) delay = DEFAULT_RETRY_DELAY_MS;
        free(setting);
        ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_NAK;
        ret->val.nak = (handler_option_u64_t){.is_some = true, .val = delay};
        return;
    }

    char *subject = config_get("output_subject");
    char *event = order_event(order, stream_seq);
    handler_string_t to;
    handler_string_set(&to, subject ? subject : DEFAULT_OUTPUT_SUBJECT);
    handler_list_u8_t payload = {(uint8_t *)event, strlen(event)};
    jetwasm_runtime_publish_header_t header;
    handler_string_set(&header.f0, "order-id");
    handler_string_set(&header.f1, order->id);
    jetwasm_runtime_publish_list_header_t headers = {&header, 1};
    jetwasm_runtime_publish_publish_ack_t ack;
    jetwasm_runtime_publish_publish_error_t err;

    // msg-id NULL (none): the host derives a stable one, so a redelivery does not publish twice.
    if (jetwasm_runtime_publish_publish(&to, &payload, &headers, NULL, &ack, &err)) {
        log_at(JETWASM_RUNTIME_LOG_LEVEL_INFO, "processed order %s", order->id);
        ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_ACK;
        jetwasm_runtime_publish_publish_ack_free(&ack);
    } else {
        if (err.tag == JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_DENIED) {
            term(ret, "cannot publish: denied subject %.*s", STR(err.val.denied));
        } else {
            log_publish_error(order->id, &err);
            ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_NAK; // the consumer's backoff applies
            ret->val.nak.is_some = false;
        }
        jetwasm_runtime_publish_publish_error_free(&err);
    }
    free(event);
    free(subject);
}

// The world's export: handles one message and says what to do with it.
void exports_handler_handle(handler_message_t *msg, handler_disposition_t *ret) {
    order_t order;
    char reason[ORDER_REASON_MAX];
    if (order_parse(msg->payload.ptr, msg->payload.len, &order, reason)) {
        process(&order, msg->stream_seq, ret);
        order_free(&order);
    } else {
        term(ret, "%s", reason);
    }
    handler_message_free(msg);
}
