/* vd_json: compact JSON text of jansson values, written straight into one buffer.
 *
 * Every request the daemon handles ends in two to four outputs on Kafka and a record in Redis,
 * each a small JSON object of IDs, closed-set names, numbers and times. json_dumpb() spends
 * most of such an output's cost on work these do not need: per call it sets up and tears down
 * a hashtable of the containers being written (to refuse cycles), with the container's
 * address formatted by snprintf as its key, and it decodes every character of every string as
 * UTF-8. The writer here walks the same values and writes the same bytes as
 * json_dumpb(JSON_COMPACT | JSON_REAL_PRECISION(p)), tests/unit/test_json.c and the fuzz
 * target compare the two, while it
 *   - takes jansson's word that a string value or key is UTF-8 (json_string() and
 *     json_object_set() check that when it is made), so it only looks for '"', '\\' and
 *     control characters, with one table lookup per byte;
 *   - refuses containers nested deeper than VD_JSON_MAX_DEPTH instead of tracking them, which
 *     bounds a cycle as surely;
 *   - grows its buffer only when the text outgrows the one inside the struct.
 * Nothing here allocates unless the text is longer than that inline buffer, and the result of
 * vd_json_end() is one allocation of the text's size. */
#ifndef VD_JSON_H
#define VD_JSON_H

#include <stddef.h>
#include <jansson.h>

#define VD_JSON_MAX_DEPTH 32

/* A text being written. Lives on the caller's stack; not to be copied once begun. */
struct vd_json_out {
    char *buf; /* inline or, once outgrown, on the heap */
    size_t len, cap;
    int failed; /* out of memory, too deep, or a value that has no JSON text */
    char inline_buf[2048];
};

void vd_json_begin(struct vd_json_out *o);
/* Appends n bytes as they are (the caller's JSON syntax). */
void vd_json_raw(struct vd_json_out *o, const char *s, size_t n);
/* Appends s (n bytes of UTF-8, which the caller vouches for) as a JSON string: quoted, with
 * '"', '\\' and control characters escaped the way jansson does. */
void vd_json_string(struct vd_json_out *o, const char *s, size_t n);
/* Appends v as compact JSON; reals with `precision` significant digits (1..31, as
 * JSON_REAL_PRECISION; 0 means jansson's default, 17). */
void vd_json_value(struct vd_json_out *o, const json_t *v, int precision);
/* Ends the text: returns it NUL-terminated, allocated at its size for the caller to free(),
 * with its length in *len when len is not NULL; NULL when anything failed. Either way the
 * buffer is released and o is done. */
char *vd_json_end(struct vd_json_out *o, size_t *len);

/* v as one compact JSON text (any value, as JSON_ENCODE_ANY), for free(); NULL on failure. */
char *vd_json_dumps(const json_t *v, int precision);

#endif
