/* vd_metrics: writes metrics as Prometheus text (exposition format 0.0.4) into a growable buffer.
 *
 * This module keeps no registry of its own: the daemon's counters already live in the stats
 * structs of each module, so whoever answers a scrape walks those structs and calls the
 * functions below, one metric family at a time. Each family is written as
 * "# HELP", "# TYPE", then its samples, as the format requires (all samples of a family
 * together, HELP/TYPE once, before them). Numbers: integers (uint64_t) are printed as
 * integers; doubles with "%.17g" so that no precision is lost, and NaN, +Inf and -Inf are
 * spelled the way Prometheus parses them. The printf family follows LC_NUMERIC; the daemon
 * never calls setlocale(), so the decimal point is '.'. HELP text escapes backslash and
 * newline; label values also escape the double quote.
 *
 * Errors are sticky: an allocation failure or an invalid metric or label name sets
 * buf->failed, after which every call returns -1 and appends nothing. A renderer can thus
 * make many calls and check once at the end; the HTTP edge answers 500 for a failed buffer
 * rather than serve a partial page. No I/O, no clock, no globals. */
#ifndef VD_METRICS_H
#define VD_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* The text written so far. s is NUL-terminated once anything was appended (NULL before);
 * the buffer owns it until vd_metrics_buf_free(). A caller may take s over (and then free()
 * it itself) instead of calling vd_metrics_buf_free(). */
struct vd_metrics_buf {
    char *s;
    size_t len, cap;
    int failed; /* allocation failure or invalid name: the text is incomplete */
};

enum vd_metrics_type {
    VD_METRICS_COUNTER,
    VD_METRICS_GAUGE,
    VD_METRICS_HISTOGRAM,
    VD_METRICS_UNTYPED,
};

/* One label of a sample: name must match [a-zA-Z_][a-zA-Z0-9_]*; value is any UTF-8 text. */
struct vd_metrics_label {
    const char *name;
    const char *value;
};

#define VD_HISTOGRAM_MAX_BUCKETS 32

/* A histogram with fixed upper bounds (the +Inf bucket is implied). Plain data: it may be
 * embedded in a stats struct and copied; it owns no memory. An observation v goes into the
 * first bucket whose bound is >= v (Prometheus' "le"). counts[] are per bucket, not
 * cumulative; rendering makes them cumulative. */
struct vd_histogram {
    size_t nbounds;
    double bounds[VD_HISTOGRAM_MAX_BUCKETS];
    uint64_t counts[VD_HISTOGRAM_MAX_BUCKETS + 1]; /* counts[nbounds] is the +Inf bucket */
    uint64_t count;
    double sum;
};

void vd_metrics_buf_init(struct vd_metrics_buf *b);
/* Releases the text; the buffer may be reused after vd_metrics_buf_init(). */
void vd_metrics_buf_free(struct vd_metrics_buf *b);

/* Writes "# HELP name help" (omitted when help is NULL) and "# TYPE name type". name must
 * match [a-zA-Z_:][a-zA-Z0-9_:]*. Returns 0 or -1 (buf->failed set). */
int vd_metrics_header(struct vd_metrics_buf *b, const char *name, const char *help,
                      enum vd_metrics_type type);

/* Writes one sample line: name{l1="v1",...} value. labels may be NULL when nlabels is 0.
 * Returns 0 or -1 (buf->failed set). */
int vd_metrics_sample_u64(struct vd_metrics_buf *b, const char *name,
                          const struct vd_metrics_label *labels, size_t nlabels, uint64_t value);
int vd_metrics_sample_double(struct vd_metrics_buf *b, const char *name,
                             const struct vd_metrics_label *labels, size_t nlabels, double value);

/* A whole family of one unlabelled sample: header plus "name value". Returns 0 or -1. */
int vd_metrics_counter(struct vd_metrics_buf *b, const char *name, const char *help,
                       uint64_t value);
int vd_metrics_gauge(struct vd_metrics_buf *b, const char *name, const char *help, double value);
/* A counter whose value is not a whole number (process_cpu_seconds_total). */
int vd_metrics_counter_double(struct vd_metrics_buf *b, const char *name, const char *help,
                              double value);

/* A counter family with one label: n samples name{label="values[i]"} counts[i], in the order
 * given (e.g. vd_unmatched_total{reason=...} from an array indexed by an enum). Returns 0 or
 * -1. */
int vd_metrics_counter_family(struct vd_metrics_buf *b, const char *name, const char *help,
                              const char *label, const char *const *values,
                              const uint64_t *counts, size_t n);

/* Sets h to empty with the given upper bounds, which must be finite and strictly
 * increasing, at most VD_HISTOGRAM_MAX_BUCKETS of them (they are copied). Returns 0, or -1
 * with h left empty with no bounds (everything then lands in +Inf). */
int vd_histogram_init(struct vd_histogram *h, const double *bounds, size_t nbounds);

/* Counts one observation. NaN is ignored (it would poison the sum). */
void vd_histogram_observe(struct vd_histogram *h, double v);

/* Writes the family: header, name_bucket{le="..."} cumulative counts ending with le="+Inf",
 * then name_sum and name_count. Bounds are printed in the shortest form that reads back to
 * the same double (0.005, not 0.0050000000000000001), so that "le" matches what a reader
 * typed in a query. Returns 0 or -1. */
int vd_histogram_render(struct vd_metrics_buf *b, const char *name, const char *help,
                        const struct vd_histogram *h);

#endif
