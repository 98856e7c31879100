// The {{name}} publisher: jetwasm calls exports_publisher_on_tick on every firing of its timer.
// ./build.sh generates publisher.h (the WIT types and imports) from wit/ at build time.
//
// Config key: subject (default ticks).
//
// Memory: an error string we return is freed by the bindings after the call (so it must be
// malloc'd); what we pass to imports stays ours; what they return becomes ours.
#define _GNU_SOURCE // asprintf
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publisher.h"

// The configuration value for key as a new C string (free it), or NULL when it is not set.
static char *config_get(const char *key) {
    publisher_string_t name, value;
    publisher_string_set(&name, key);
    if (!jetwasm_runtime_config_get(&name, &value)) return NULL;
    char *s = strndup((const char *)value.ptr, value.len);
    publisher_string_free(&value);
    return s;
}

// Why a publish failed, as a new string.
static publisher_string_t describe(const char *subject,
                                   const jetwasm_runtime_publish_publish_error_t *e) {
    const char *what = "quota exceeded";
    publisher_string_t detail = {(uint8_t *)"", 0}; // what the variants with a string carry
    switch (e->tag) {
    case JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_DENIED:
        what = "denied subject ";
        detail = e->val.denied;
        break;
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
        what = "too large";
        break;
    }
    char *s;
    if (asprintf(&s, "publishing to %s failed: %s%.*s", subject, what, (int)detail.len,
                 (const char *)detail.ptr) < 0)
        abort();
    return (publisher_string_t){(uint8_t *)s, strlen(s)};
}

// Publishes one event per tick. Returns true for ok; false with *err set for an error, which
// the host logs and counts (and the bindings free).
bool exports_publisher_on_tick(publisher_tick_t *tick, publisher_string_t *err) {
    char *setting = config_get("subject"), *event;
    const char *subject = setting ? setting : "ticks";
    if (asprintf(&event, "{\"tick\":%llu,\"now_ms\":%llu}", (unsigned long long)tick->seq,
                 (unsigned long long)tick->now_ms) < 0)
        abort();

    publisher_string_t to;
    publisher_string_set(&to, subject);
    publisher_list_u8_t payload = {(uint8_t *)event, strlen(event)};
    jetwasm_runtime_publish_list_header_t headers = {NULL, 0};
    jetwasm_runtime_publish_publish_ack_t ack;
    jetwasm_runtime_publish_publish_error_t e;
    // msg-id NULL: the host derives one from the firing, so it is stored once.
    bool ok = jetwasm_runtime_publish_publish(&to, &payload, &headers, NULL, &ack, &e);
    if (ok) {
        jetwasm_runtime_publish_publish_ack_free(&ack);
    } else {
        *err = describe(subject, &e);
        jetwasm_runtime_publish_publish_error_free(&e);
    }
    free(event);
    free(setting);
    return ok;
}
