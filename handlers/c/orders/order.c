// Reading an order from JSON and writing the processed-order event: see order.h.
//
// The parser is a strict recursive-descent reader of RFC 8259 JSON. It checks the whole
// payload first (so a syntax error anywhere is "invalid JSON"), remembering where the order's
// fields are; only then are the fields checked and decoded. Strings must be valid UTF-8.
#include "order.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64 // nesting deeper than this is rejected, rather than exhausting the stack

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } kind_t;

// What the parser remembers about one field of the order.
typedef struct {
    const char *name;
    bool found;
    kind_t kind;
    const uint8_t *at; // where its value starts
    size_t count;      // for an array: how many elements it has
} field_t;

enum { ID, CUSTOMER, ITEMS, TOTAL, INVENTORY_BUSY, CRASH, FIELDS };

typedef struct {
    const uint8_t *start, *p, *end; // the payload, and the cursor
    int depth;
    char *reason; // ORDER_REASON_MAX bytes
} parser_t;

static bool fail(parser_t *ps, const char *what) {
    snprintf(ps->reason, ORDER_REASON_MAX, "invalid JSON: %s at byte %zu", what,
             (size_t)(ps->p - ps->start));
    return false;
}

// Is the next byte one of `chars`?
static bool next_is(parser_t *ps, const char *chars) {
    return ps->p < ps->end && *ps->p != '\0' && strchr(chars, *ps->p) != NULL;
}

static void skip_space(parser_t *ps) {
    while (next_is(ps, " \t\n\r")) ps->p++;
}

// Consumes `c` if it comes next (after whitespace).
static bool eat(parser_t *ps, char c) {
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return true;
    }
    return false;
}

static bool literal(parser_t *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "expected a value");
    ps->p += n;
    return true;
}

// Consumes one or more digits.
static bool digits(parser_t *ps) {
    const uint8_t *from = ps->p;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    return ps->p > from;
}

// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
static bool number(parser_t *ps) {
    if (next_is(ps, "-")) ps->p++;
    if (next_is(ps, "0")) ps->p++;
    else if (!digits(ps)) return fail(ps, "invalid number");
    if (next_is(ps, ".")) {
        ps->p++;
        if (!digits(ps)) return fail(ps, "invalid number");
    }
    if (next_is(ps, "eE")) {
        ps->p++;
        if (next_is(ps, "+-")) ps->p++;
        if (!digits(ps)) return fail(ps, "invalid number");
    }
    return true;
}

// The length of the UTF-8 sequence at p (n bytes available), or 0 if it is not valid UTF-8
// (overlong, a surrogate, beyond U+10FFFF, or cut short).
static size_t utf8_length(const uint8_t *p, size_t n) {
    uint32_t c = p[0], min;
    size_t len;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { len = 2; c &= 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; c &= 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; c &= 0x07; min = 0x10000; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (p[i] & 0x3F);
    }
    return c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF) ? 0 : len;
}

// Writes code point c as UTF-8 into out; returns how many bytes.
static size_t utf8_encode(uint32_t c, uint8_t out[4]) {
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    size_t n = c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    for (size_t i = n - 1; i > 0; i--, c >>= 6) out[i] = (uint8_t)(0x80 | (c & 0x3F));
    out[0] = (uint8_t)(0xFF00 >> n | c); // n one-bits, a zero, then the rest of c
    return n;
}

// The four hex digits of a \u escape.
static bool hex4(parser_t *ps, uint32_t *u) {
    if (ps->end - ps->p < 4) return fail(ps, "invalid \\u escape");
    *u = 0;
    for (int i = 0; i < 4; i++, ps->p++) {
        int c = *ps->p, lower = c | 0x20, digit;
        if (c >= '0' && c <= '9') digit = c - '0';
        else if (lower >= 'a' && lower <= 'f') digit = lower - 'a' + 10;
        else return fail(ps, "invalid \\u escape");
        *u = *u << 4 | (uint32_t)digit;
    }
    return true;
}

// Parses the string literal at the cursor and sets *len to the length of its decoded UTF-8.
// When out is not NULL the decoded bytes are also stored there, as many as fit in cap.
static bool string(parser_t *ps, uint8_t *out, size_t cap, size_t *len) {
    *len = 0;
    ps->p++; // the opening quote
    for (;;) {
        if (ps->p >= ps->end) return fail(ps, "unterminated string");
        uint8_t c = *ps->p, escaped[4];
        const uint8_t *bytes = ps->p;
        size_t n;
        if (c == '"') {
            ps->p++;
            return true;
        } else if (c < 0x20) {
            return fail(ps, "control character in string");
        } else if (c != '\\') {
            if ((n = utf8_length(ps->p, (size_t)(ps->end - ps->p))) == 0)
                return fail(ps, "invalid UTF-8");
            ps->p += n;
        } else {
            bytes = escaped;
            n = 1;
            if (++ps->p >= ps->end) return fail(ps, "unterminated string");
            switch (*ps->p++) {
            case '"': escaped[0] = '"'; break;
            case '\\': escaped[0] = '\\'; break;
            case '/': escaped[0] = '/'; break;
            case 'b': escaped[0] = '\b'; break;
            case 'f': escaped[0] = '\f'; break;
            case 'n': escaped[0] = '\n'; break;
            case 'r': escaped[0] = '\r'; break;
            case 't': escaped[0] = '\t'; break;
            case 'u': {
                uint32_t u, low;
                if (!hex4(ps, &u)) return false;
                if (u >= 0xD800 && u <= 0xDBFF) { // a high surrogate: a low one must follow
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                        return fail(ps, "unpaired surrogate in \\u escape");
                    ps->p += 2;
                    if (!hex4(ps, &low)) return false;
                    if (low < 0xDC00 || low > 0xDFFF)
                        return fail(ps, "unpaired surrogate in \\u escape");
                    u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
                } else if (u >= 0xDC00 && u <= 0xDFFF) {
                    return fail(ps, "unpaired surrogate in \\u escape");
                }
                n = utf8_encode(u, escaped);
                break;
            }
            default:
                ps->p--;
                return fail(ps, "invalid escape");
            }
        }
        if (out && *len + n <= cap) memcpy(out + *len, bytes, n);
        *len += n;
    }
}

static bool value(parser_t *ps, field_t *fields, kind_t *kind, size_t *count);

static bool array(parser_t *ps, size_t *count) {
    ps->p++; // [
    if (eat(ps, ']')) return true;
    do {
        if (!value(ps, NULL, NULL, NULL)) return false;
        ++*count;
    } while (eat(ps, ','));
    return eat(ps, ']') || fail(ps, "expected ',' or ']'");
}

// Parses an object; the values of the named `fields` (if any) are remembered.
static bool object(parser_t *ps, field_t *fields) {
    ps->p++; // {
    if (eat(ps, '}')) return true;
    do {
        skip_space(ps);
        if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a field name");
        uint8_t name[16]; // long enough for the names we look for
        size_t len;
        if (!string(ps, name, sizeof name, &len)) return false;
        if (!eat(ps, ':')) return fail(ps, "expected ':'");

        field_t *field = NULL;
        for (int i = 0; fields && i < FIELDS; i++)
            if (strlen(fields[i].name) == len && memcmp(fields[i].name, name, len) == 0)
                field = &fields[i];
        skip_space(ps);
        const uint8_t *at = ps->p;
        kind_t kind;
        size_t count;
        if (!value(ps, NULL, &kind, &count)) return false;
        if (field) // a repeated field: the last one counts
            *field = (field_t){field->name, true, kind, at, count};
    } while (eat(ps, ','));
    return eat(ps, '}') || fail(ps, "expected ',' or '}'");
}

// Parses one value. `fields`: for the top-level object, the fields to remember.
static bool value(parser_t *ps, field_t *fields, kind_t *kind, size_t *count) {
    kind_t k = JSON_NULL;
    size_t n = 0, len;
    bool ok;
    skip_space(ps);
    if (ps->p >= ps->end) return fail(ps, "unexpected end of input");
    if (++ps->depth > MAX_DEPTH) return fail(ps, "nested too deeply");
    switch (*ps->p) {
    case '{': k = JSON_OBJECT; ok = object(ps, fields); break;
    case '[': k = JSON_ARRAY; ok = array(ps, &n); break;
    case '"': k = JSON_STRING; ok = string(ps, NULL, 0, &len); break;
    case 't': k = JSON_BOOL; ok = literal(ps, "true"); break;
    case 'f': k = JSON_BOOL; ok = literal(ps, "false"); break;
    case 'n': k = JSON_NULL; ok = literal(ps, "null"); break;
    default:
        k = JSON_NUMBER;
        ok = next_is(ps, "-0123456789") ? number(ps) : fail(ps, "expected a value");
    }
    ps->depth--;
    if (kind) *kind = k;
    if (count) *count = n;
    return ok;
}

// Checks a field's presence and kind.
static bool check(const field_t *f, bool required, kind_t kind, const char *what, char *reason) {
    if (!f->found && !required) return true;
    if (!f->found)
        snprintf(reason, ORDER_REASON_MAX, "invalid order: missing field %s", f->name);
    else if (f->kind != kind)
        snprintf(reason, ORDER_REASON_MAX, "invalid order: field %s must be %s", f->name, what);
    return f->found && f->kind == kind;
}

// Decodes a string field (already checked) into a new NUL-terminated string at *out.
static bool decode(parser_t *ps, const field_t *f, char **out, char *reason) {
    size_t len;
    ps->p = f->at;
    string(ps, NULL, 0, &len); // measure
    if (!(*out = malloc(len + 1))) abort(); // out of memory
    ps->p = f->at;
    string(ps, (uint8_t *)*out, len, &len);
    (*out)[len] = '\0';
    if (strlen(*out) == len) return true;
    // "\u0000" is valid JSON, but would cut the C string short.
    snprintf(reason, ORDER_REASON_MAX, "invalid order: field %s must not contain \\u0000", f->name);
    return false;
}

bool order_parse(const uint8_t *json, size_t len, order_t *order, char reason[ORDER_REASON_MAX]) {
    field_t f[FIELDS] = {
        [ID] = {.name = "id"},
        [CUSTOMER] = {.name = "customer"},
        [ITEMS] = {.name = "items"},
        [TOTAL] = {.name = "total"},
        [INVENTORY_BUSY] = {.name = "inventory_busy"},
        [CRASH] = {.name = "crash"},
    };
    parser_t ps = {json, json, json + len, 0, reason};
    kind_t kind;
    *order = (order_t){0};

    if (!value(&ps, f, &kind, NULL)) return false;
    skip_space(&ps);
    if (ps.p != ps.end) return fail(&ps, "trailing characters");

    if (kind != JSON_OBJECT) {
        snprintf(reason, ORDER_REASON_MAX, "invalid order: expected a JSON object");
        return false;
    }
    if (!check(&f[ID], true, JSON_STRING, "a string", reason) ||
        !check(&f[CUSTOMER], true, JSON_STRING, "a string", reason) ||
        !check(&f[ITEMS], true, JSON_ARRAY, "an array", reason) ||
        !check(&f[TOTAL], true, JSON_NUMBER, "a number", reason) ||
        !check(&f[INVENTORY_BUSY], false, JSON_BOOL, "a boolean", reason) ||
        !check(&f[CRASH], false, JSON_BOOL, "a boolean", reason))
        return false;
    if (f[ITEMS].count == 0) {
        snprintf(reason, ORDER_REASON_MAX, "invalid order: no items");
        return false;
    }
    // The number is valid JSON and ends before the object's closing brace, so strtod reads
    // exactly it.
    order->total = strtod((const char *)f[TOTAL].at, NULL);
    if (!isfinite(order->total)) {
        snprintf(reason, ORDER_REASON_MAX, "invalid order: field total is out of range");
        return false;
    }
    order->items = f[ITEMS].count;
    order->inventory_busy = f[INVENTORY_BUSY].found && *f[INVENTORY_BUSY].at == 't';
    order->crash = f[CRASH].found && *f[CRASH].at == 't';
    if (!decode(&ps, &f[ID], &order->id, reason) ||
        !decode(&ps, &f[CUSTOMER], &order->customer, reason)) {
        order_free(order);
        return false;
    }
    return true;
}

void order_free(order_t *order) {
    free(order->id);
    free(order->customer);
    *order = (order_t){0};
}

// s as a JSON string literal (a new string). s is valid UTF-8, which JSON carries as it is.
static char *quote(const char *s) {
    char *out = malloc(strlen(s) * 6 + 3), *o = out; // \u00XX is the longest escape
    if (!out) abort();
    *o++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') *o++ = '\\', *o++ = (char)c;
        else if (c < 0x20) o += sprintf(o, "\\u%04x", c);
        else *o++ = (char)c;
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

char *order_event(const order_t *order, uint64_t processed_seq) {
    // A whole number without a fraction; otherwise the shortest decimal that reads back as
    // the same double (9.5, not 9.5000000000000000).
    char total[32];
    if (order->total == floor(order->total) && fabs(order->total) < 1e15) {
        snprintf(total, sizeof total, "%.0f", order->total);
    } else {
        for (int digits = 1; digits <= 17; digits++) {
            snprintf(total, sizeof total, "%.*g", digits, order->total);
            if (strtod(total, NULL) == order->total) break;
        }
    }
    char *id = quote(order->id), *customer = quote(order->customer);
    const char *format =
        "{\"id\":%s,\"customer\":%s,\"total\":%s,\"items\":%zu,\"processed_seq\":%llu}";
    int n = snprintf(NULL, 0, format, id, customer, total, order->items,
                     (unsigned long long)processed_seq);
    char *event = malloc((size_t)n + 1);
    if (!event) abort();
    snprintf(event, (size_t)n + 1, format, id, customer, total, order->items,
             (unsigned long long)processed_seq);
    free(id);
    free(customer);
    return event;
}
