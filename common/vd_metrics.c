/* vd_metrics: Prometheus text exposition (format 0.0.4) rendered into a growable buffer.
 *
 * Everything goes through two primitives: grow() keeps room for the next write (doubling,
 * so rendering n bytes costs O(n)) and appendf() prints into it. Both honour the sticky
 * failure flag, so the public functions only validate names and compose lines. Names are
 * checked because Prometheus rejects the whole scrape on one bad line; a bad name is a
 * programming error and shows up as a failed buffer (HTTP 500) in the first test run rather
 * than as a silently missing series. */
#include "vd_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIN_CAP 256

static const char *const type_names[] = {"counter", "gauge", "histogram", "untyped"};

void vd_metrics_buf_init(struct vd_metrics_buf *b) { memset(b, 0, sizeof *b); }

void vd_metrics_buf_free(struct vd_metrics_buf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* Makes room for extra more bytes plus the terminating NUL. Returns 0 or -1 (failed set). */
static int grow(struct vd_metrics_buf *b, size_t extra) {
    if (b->failed) return -1;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : MIN_CAP;
    while (cap < need) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->failed = 1;
        return -1;
    }
    b->s = s;
    b->cap = cap;
    return 0;
}

static int append(struct vd_metrics_buf *b, const char *s, size_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

static int appends(struct vd_metrics_buf *b, const char *s) { return append(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static int appendf(struct vd_metrics_buf *b,
                                                         const char *fmt, ...) {
    if (grow(b, 64) < 0) return -1;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return -1;
    }
    if ((size_t)n >= b->cap - b->len) {
        if (grow(b, (size_t)n) < 0) return -1;
        va_start(ap, fmt);
        vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

/* Copies s, escaping backslash and newline, and the double quote too when quote is set
 * (label values; HELP text leaves quotes alone). */
static int append_escaped(struct vd_metrics_buf *b, const char *s, int quote) {
    for (const char *p = s; *p; p++) {
        const char *esc = NULL;
        if (*p == '\\') esc = "\\\\";
        else if (*p == '\n') esc = "\\n";
        else if (*p == '"' && quote) esc = "\\\"";
        if (esc ? appends(b, esc) : append(b, p, 1)) return -1;
    }
    return 0;
}

static int append_double(struct vd_metrics_buf *b, double v) {
    if (isnan(v)) return appends(b, "NaN");
    if (isinf(v)) return appends(b, v > 0 ? "+Inf" : "-Inf");
    return appendf(b, "%.17g", v);
}

/* The shortest of %.15g, %.16g, %.17g that reads back as v (for "le" label values). */
static void shortest_double(char *out, size_t outlen, double v) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names (colon allowed), the same without ':' for labels. */
static int name_ok(const char *s, int colon) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

static int fail(struct vd_metrics_buf *b) {
    b->failed = 1;
    return -1;
}

int vd_metrics_header(struct vd_metrics_buf *b, const char *name, const char *help,
                      enum vd_metrics_type type) {
    if (b->failed) return -1;
    if (!name_ok(name, 1) || (unsigned)type > VD_METRICS_UNTYPED) return fail(b);
    if (help) {
        if (appendf(b, "# HELP %s ", name) || append_escaped(b, help, 0) || appends(b, "\n"))
            return -1;
    }
    return appendf(b, "# TYPE %s %s\n", name, type_names[type]);
}

/* Writes "name{a="x",b="y"} " or "name " (the value follows). */
static int sample_start(struct vd_metrics_buf *b, const char *name,
                        const struct vd_metrics_label *labels, size_t nlabels) {
    if (b->failed) return -1;
    if (!name_ok(name, 1)) return fail(b);
    for (size_t i = 0; i < nlabels; i++)
        if (!name_ok(labels[i].name, 0) || !labels[i].value) return fail(b);
    if (appends(b, name)) return -1;
    for (size_t i = 0; i < nlabels; i++) {
        if (appendf(b, "%c%s=\"", i ? ',' : '{', labels[i].name) ||
            append_escaped(b, labels[i].value, 1) || appends(b, "\""))
            return -1;
    }
    return appends(b, nlabels ? "} " : " ");
}

int vd_metrics_sample_u64(struct vd_metrics_buf *b, const char *name,
                          const struct vd_metrics_label *labels, size_t nlabels, uint64_t value) {
    if (sample_start(b, name, labels, nlabels)) return -1;
    return appendf(b, "%llu\n", (unsigned long long)value);
}

int vd_metrics_sample_double(struct vd_metrics_buf *b, const char *name,
                             const struct vd_metrics_label *labels, size_t nlabels, double value) {
    if (sample_start(b, name, labels, nlabels) || append_double(b, value)) return -1;
    return appends(b, "\n");
}

int vd_metrics_counter(struct vd_metrics_buf *b, const char *name, const char *help,
                       uint64_t value) {
    if (vd_metrics_header(b, name, help, VD_METRICS_COUNTER)) return -1;
    return vd_metrics_sample_u64(b, name, NULL, 0, value);
}

int vd_metrics_counter_double(struct vd_metrics_buf *b, const char *name, const char *help,
                              double value) {
    if (vd_metrics_header(b, name, help, VD_METRICS_COUNTER)) return -1;
    return vd_metrics_sample_double(b, name, NULL, 0, value);
}

int vd_metrics_gauge(struct vd_metrics_buf *b, const char *name, const char *help, double value) {
    if (vd_metrics_header(b, name, help, VD_METRICS_GAUGE)) return -1;
    return vd_metrics_sample_double(b, name, NULL, 0, value);
}

int vd_metrics_counter_family(struct vd_metrics_buf *b, const char *name, const char *help,
                              const char *label, const char *const *values,
                              const uint64_t *counts, size_t n) {
    if (vd_metrics_header(b, name, help, VD_METRICS_COUNTER)) return -1;
    for (size_t i = 0; i < n; i++) {
        struct vd_metrics_label l = {label, values[i]};
        if (vd_metrics_sample_u64(b, name, &l, 1, counts[i])) return -1;
    }
    return 0;
}

int vd_histogram_init(struct vd_histogram *h, const double *bounds, size_t nbounds) {
    memset(h, 0, sizeof *h);
    if (nbounds > VD_HISTOGRAM_MAX_BUCKETS) return -1;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) return -1;
    }
    memcpy(h->bounds, bounds, nbounds * sizeof *bounds);
    h->nbounds = nbounds;
    return 0;
}

void vd_histogram_observe(struct vd_histogram *h, double v) {
    if (isnan(v)) return;
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

int vd_histogram_render(struct vd_metrics_buf *b, const char *name, const char *help,
                        const struct vd_histogram *h) {
    if (vd_metrics_header(b, name, help, VD_METRICS_HISTOGRAM)) return -1;
    size_t n = strlen(name);
    char sub[256], le[32];
    if (n > sizeof sub - sizeof "_bucket") return fail(b);
    uint64_t cum = 0;
    memcpy(sub, name, n);
    memcpy(sub + n, "_bucket", sizeof "_bucket");
    for (size_t i = 0; i <= h->nbounds; i++) {
        cum += h->counts[i];
        if (i < h->nbounds) shortest_double(le, sizeof le, h->bounds[i]);
        else snprintf(le, sizeof le, "+Inf");
        struct vd_metrics_label l = {"le", le};
        if (vd_metrics_sample_u64(b, sub, &l, 1, cum)) return -1;
    }
    memcpy(sub + n, "_sum", sizeof "_sum");
    if (vd_metrics_sample_double(b, sub, NULL, 0, h->sum)) return -1;
    memcpy(sub + n, "_count", sizeof "_count");
    return vd_metrics_sample_u64(b, sub, NULL, 0, h->count);
}
