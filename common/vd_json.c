/* vd_json: compact JSON text of jansson values, written straight into one buffer (see
 * vd_json.h for why not json_dumpb(), and what the writer assumes instead). */
#include "vd_json.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void vd_json_begin(struct vd_json_out *o) {
    o->buf = o->inline_buf;
    o->len = 0;
    o->cap = sizeof o->inline_buf;
    o->failed = 0;
}

/* Room for n more bytes (and the terminating NUL); 0, or -1 with o->failed set. */
static int reserve(struct vd_json_out *o, size_t n) {
    if (o->failed) return -1;
    if (o->len + n < o->cap) return 0;
    if (n > SIZE_MAX / 4 - o->len) { /* the doubling below could not reach it */
        o->failed = 1;
        return -1;
    }
    size_t cap = o->cap * 2;
    while (o->len + n >= cap) cap *= 2;
    char *p;
    if (o->buf == o->inline_buf) {
        p = malloc(cap);
        if (p) memcpy(p, o->buf, o->len);
    } else {
        p = realloc(o->buf, cap);
    }
    if (!p) {
        o->failed = 1;
        return -1;
    }
    o->buf = p;
    o->cap = cap;
    return 0;
}

void vd_json_raw(struct vd_json_out *o, const char *s, size_t n) {
    if (reserve(o, n) < 0) return;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void put(struct vd_json_out *o, char c) {
    if (reserve(o, 1) < 0) return;
    o->buf[o->len++] = c;
}

void vd_json_string(struct vd_json_out *o, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    put(o, '"');
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\') p++;
        if (p > run) vd_json_raw(o, (const char *)run, (size_t)(p - run));
        if (p == end) break;
        char esc[6] = {'\\', 0};
        size_t len = 2;
        switch (*p) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default: /* another control character: \u00XX, upper-case hex as jansson writes it */
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0xf];
            len = 6;
        }
        vd_json_raw(o, esc, len);
        p++;
    }
    put(o, '"');
}

static void integer(struct vd_json_out *o, json_int_t v) {
    char buf[24], *e = buf + sizeof buf, *p = e;
    /* In unsigned arithmetic, so that the most negative value has a magnitude too. */
    unsigned long long m = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0) *--p = '-';
    vd_json_raw(o, p, (size_t)(e - p));
}

/* As jansson's: "%.<precision>g", then ".0" when that reads as an integer, and the exponent
 * without '+' or leading zeros. */
static void real(struct vd_json_out *o, double v, int precision) {
    char buf[64];
    if (!isfinite(v)) {
        o->failed = 1;
        return;
    }
    int n = snprintf(buf, sizeof buf - 2, "%.*g", precision > 0 ? precision : 17, v);
    if (n < 0 || (size_t)n >= sizeof buf - 2) {
        o->failed = 1;
        return;
    }
    char *e = strchr(buf, 'e');
    if (!e && !strchr(buf, '.')) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    if (e) {
        char *start = e + 1, *digits;
        if (*start == '-') start++;
        digits = e + 2; /* past the sign */
        while (*digits == '0') digits++;
        if (digits != start) {
            memmove(start, digits, (size_t)(buf + n - digits) + 1);
            n -= (int)(digits - start);
        }
    }
    vd_json_raw(o, buf, (size_t)n);
}

static void value(struct vd_json_out *o, const json_t *v, int precision, int depth) {
    if (o->failed) return;
    if (!v) {
        o->failed = 1;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_NULL: vd_json_raw(o, "null", 4); break;
    case JSON_TRUE: vd_json_raw(o, "true", 4); break;
    case JSON_FALSE: vd_json_raw(o, "false", 5); break;
    case JSON_INTEGER: integer(o, json_integer_value(v)); break;
    case JSON_REAL: real(o, json_real_value(v), precision); break;
    case JSON_STRING: vd_json_string(o, json_string_value(v), json_string_length(v)); break;
    case JSON_ARRAY: {
        if (depth >= VD_JSON_MAX_DEPTH) {
            o->failed = 1;
            return;
        }
        size_t n = json_array_size(v);
        put(o, '[');
        for (size_t i = 0; i < n; i++) {
            if (i) put(o, ',');
            value(o, json_array_get(v, i), precision, depth + 1);
        }
        put(o, ']');
        break;
    }
    case JSON_OBJECT: {
        if (depth >= VD_JSON_MAX_DEPTH) {
            o->failed = 1;
            return;
        }
        put(o, '{');
        int first = 1;
        /* json_object_iter walks the members in the order they were set, as json_dumpb
         * does without JSON_SORT_KEYS. */
        for (void *it = json_object_iter((json_t *)v); it;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first) put(o, ',');
            first = 0;
            vd_json_string(o, json_object_iter_key(it), json_object_iter_key_len(it));
            put(o, ':');
            value(o, json_object_iter_value(it), precision, depth + 1);
        }
        put(o, '}');
        break;
    }
    default: o->failed = 1;
    }
}

void vd_json_value(struct vd_json_out *o, const json_t *v, int precision) {
    value(o, v, precision, 0);
}

char *vd_json_end(struct vd_json_out *o, size_t *len) {
    char *out = NULL;
    if (!o->failed && (out = malloc(o->len + 1))) {
        memcpy(out, o->buf, o->len);
        out[o->len] = '\0';
        if (len) *len = o->len;
    }
    if (o->buf != o->inline_buf) free(o->buf);
    o->buf = o->inline_buf;
    o->failed = 1; /* done: nothing more goes in */
    return out;
}

char *vd_json_dumps(const json_t *v, int precision) {
    struct vd_json_out o;
    vd_json_begin(&o);
    vd_json_value(&o, v, precision);
    return vd_json_end(&o, NULL);
}
