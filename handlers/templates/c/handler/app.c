// The {{name}} handler: jetwasm calls exports_handler_handle once per JetStream message and
// applies the disposition it returns. ./build.sh generates handler.h (the WIT types and
// imports) from wit/ at build time.
//
// Memory: the message is ours to free; a term reason is freed by the bindings after the call
// (so it must be malloc'd); what we pass to imports stays ours; what they return becomes ours.
#define _GNU_SOURCE // asprintf
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

void exports_handler_handle(handler_message_t *msg, handler_disposition_t *ret) {
    char *line;
    if (asprintf(&line, "received %.*s (%zu bytes)", (int)msg->subject.len,
                 (const char *)msg->subject.ptr, msg->payload.len) < 0)
        abort();
    handler_string_t text = {(uint8_t *)line, strlen(line)};
    jetwasm_runtime_log_log(JETWASM_RUNTIME_LOG_LEVEL_INFO, &text);
    free(line);

    // Other answers:
    //   retry in 5s (.is_some = false: on the consumer's backoff):
    //     ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_NAK;
    //     ret->val.nak = (handler_option_u64_t){.is_some = true, .val = 5000};
    //   dead-letter, with a reason (a copy: the bindings free it):
    //     ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_TERM;
    //     handler_string_dup(&ret->val.term, "unknown payload");
    //
    // Configuration, the [handler.config] table (the value is ours to free):
    //   handler_string_t key, value;
    //   handler_string_set(&key, "output_subject");
    //   if (jetwasm_runtime_config_get(&key, &value)) { ...; handler_string_free(&value); }
    //
    // Publishing, to subjects the host allows; msg-id NULL: the host derives one, so a
    // redelivery does not publish twice:
    //   handler_string_t subject;
    //   handler_string_set(&subject, "results");
    //   handler_list_u8_t payload = {(uint8_t *)"done", 4};
    //   jetwasm_runtime_publish_list_header_t headers = {NULL, 0};
    //   jetwasm_runtime_publish_publish_ack_t ack;
    //   jetwasm_runtime_publish_publish_error_t err;
    //   if (jetwasm_runtime_publish_publish(&subject, &payload, &headers, NULL, &ack, &err))
    //       jetwasm_runtime_publish_publish_ack_free(&ack);
    //   else // err.tag: JETWASM_RUNTIME_TYPES_PUBLISH_ERROR_DENIED, ...
    //       jetwasm_runtime_publish_publish_error_free(&err);
    // Many, with their acks awaited together: jetwasm_runtime_publish_publish_batch (API.md).
    //
    // Key-value state, in a bucket the config grants (`kv = ["counts"]`, declared with [[kv]]
    // in the streams spec); update writes only at the revision read (API.md has the whole
    // read-modify-write):
    //   handler_string_t bucket, key;
    //   handler_string_set(&bucket, "counts");
    //   handler_string_set(&key, "c-1");
    //   jetwasm_runtime_kv_option_entry_t entry; // is_some false when absent
    //   jetwasm_runtime_kv_kv_error_t kv_err;
    //   if (!jetwasm_runtime_kv_get(&bucket, &key, &entry, &kv_err)) {
    //       jetwasm_runtime_kv_kv_error_free(&kv_err); // kv_err.tag: ..._KV_ERROR_UNAVAILABLE, ...
    //   } else if (entry.is_some) {
    //       handler_list_u8_t value = {(uint8_t *)"2", 1};
    //       uint64_t revision; // the new one
    //       if (!jetwasm_runtime_kv_update(&bucket, &key, &value, entry.val.revision, &revision,
    //                                      &kv_err)) // ..._KV_ERROR_WRONG_REVISION: read again
    //           jetwasm_runtime_kv_kv_error_free(&kv_err);
    //       jetwasm_runtime_kv_option_entry_free(&entry);
    //   }
    ret->tag = JETWASM_RUNTIME_TYPES_DISPOSITION_ACK;
    handler_message_free(msg);
}
