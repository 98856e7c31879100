// The order the ORDERS examples exchange: reading it from JSON (with validation) and writing
// the processed-order event. C has no JSON library, so order.c holds a small, strict parser.
//
// An order is {"id": string, "customer": string, "items": [..non-empty..], "total": number},
// optionally with "inventory_busy": bool and "crash": bool; other fields are allowed.
#ifndef ORDER_H
#define ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *id;            // NUL-terminated UTF-8, owned by the order (order_free)
    char *customer;      // likewise
    size_t items;        // how many items; they are not inspected
    double total;
    bool inventory_busy; // inventory cannot take the order now: retry later
    bool crash;          // fail on purpose, to show what the host does with a trap
} order_t;

// Room for any reason order_parse gives.
#define ORDER_REASON_MAX 160

// Parses and validates the `len` bytes of JSON at `json`. On success fills `order` (release it
// with order_free) and returns true. Otherwise returns false and writes into `reason` why the
// order is rejected: it starts with "invalid JSON" or "invalid order" and names the field.
bool order_parse(const uint8_t *json, size_t len, order_t *order, char reason[ORDER_REASON_MAX]);

// Frees what order_parse allocated.
void order_free(order_t *order);

// The processed-order event as a JSON object (a new string: the caller frees it):
// {"id", "customer", "total", "items" (the count), "processed_seq"}.
char *order_event(const order_t *order, uint64_t processed_seq);

#endif
