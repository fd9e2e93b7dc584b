/* vd_config: loads, overrides, checks and prints the daemon's configuration from one table.
 *
 * Design notes:
 * - `keys[]` below is the only place a key is described: section, name, type, field offset,
 *   default (as text), bounds, flags and an optional format check. vd_config_init() applies
 *   every default through the same code path as the file and --set, so a default can never
 *   violate its own bounds; vd_config_validate() and vd_config_dump() walk the same table.
 * - The file is read into memory and handed to libinih through ini_parse_stream() with our
 *   own line reader. The reader counts lines (libinih's handler gets no line number in the
 *   distribution builds), and it normalises each line before libinih sees it, so that the
 *   result does not depend on how libinih was compiled:
 *     * leading whitespace is removed, so an indented `key = value` is an ordinary key and
 *       never a "continuation line" of the previous key;
 *     * a line starting with ';' or '#' is a comment; ';' preceded by whitespace starts an
 *       inline comment (`port = 6379 ; why`). A ';' inside a value (`a;b`) is kept, so a
 *       value cannot contain " ;". Values are not unquoted: quotes are part of the value;
 *     * a UTF-8 BOM at the start of the file is skipped.
 *   The reader also checks section headers, so `[foo]` is reported on its own line even when
 *   it holds no keys, and it refuses lines longer than libinih's line buffer instead of letting
 *   them be cut (use --set for very long values). After the first error it stops feeding
 *   lines; a syntax error libinih found earlier in the file still wins, so the message is
 *   always about the first bad line.
 * - A key given twice keeps the later value. On a load or --set error, cfg holds what was
 *   applied before the error and can still be freed; callers stop anyway.
 * - kafka.consumer.* / kafka.producer.* are not interpreted: they are stored with their origin
 *   ("FILE:LINE" or "--set") for librdkafka to accept or reject. A later setting of the same
 *   property replaces the earlier one in place. */
#define _POSIX_C_SOURCE 200809L /* strdup, strndup */

#include "vd_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ini.h>

#include "vd_log.h"

#define MAX_FILE_BYTES (1024 * 1024)
#define VALUE_SHOWN 64 /* at most this many characters of a bad value are quoted back */

enum key_type { T_STRING, T_INT, T_ENUM };

enum key_flags {
    F_NONEMPTY = 1 << 0, /* an empty string is refused */
    F_SECRET = 1 << 1,   /* vd_config_dump prints "***" when set */
};

/* Checks a string value's format; returns 0, or -1 with a sentence in msg. */
typedef int (*check_fn)(const char *value, char *msg, size_t msglen);

struct enum_def {
    int (*parse)(const char *s); /* returns the value (0..n-1) or -1 */
    const char *const *names;    /* indexed by value */
    int n;
};

struct key_def {
    const char *section;
    const char *key;
    enum key_type type;
    size_t offset;
    const char *def; /* default, as it would be written in the file */
    long long min, max; /* T_INT only */
    unsigned flags;
    check_fn check;                /* T_STRING only, may be NULL */
    const struct enum_def *enums;  /* T_ENUM only */
};

static int check_topic(const char *value, char *msg, size_t msglen);
static int check_key_prefix(const char *value, char *msg, size_t msglen);
static int check_listen(const char *value, char *msg, size_t msglen);
static int check_token(const char *value, char *msg, size_t msglen);
static int check_tiles(const char *value, char *msg, size_t msglen);
static int check_source(const char *value, char *msg, size_t msglen);

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"json", "text"};

static int format_parse(const char *s) {
    for (int i = 0; i < 2; i++)
        if (strcmp(s, format_names[i]) == 0) return i;
    return -1;
}

static const struct enum_def level_enum = {vd_log_level_parse, level_names, 4};
static const struct enum_def format_enum = {format_parse, format_names, 2};

#define OFF(field) offsetof(struct vd_config, field)
#define STR(sec, key, field, def, flags, check) \
    {sec, key, T_STRING, OFF(field), def, 0, 0, flags, check, NULL}
#define INT(sec, key, field, def, lo, hi) {sec, key, T_INT, OFF(field), def, lo, hi, 0, NULL, NULL}
#define ENUM(sec, key, field, def, e) {sec, key, T_ENUM, OFF(field), def, 0, 0, 0, NULL, e}

static const struct key_def keys[] = {
    STR("kafka", "brokers", kafka_brokers, "127.0.0.1:9092", F_NONEMPTY, NULL),
    STR("kafka", "group_id", kafka_group_id, "vdispatch", F_NONEMPTY, NULL),
    STR("kafka", "source", event_source, "vdispatchd", F_NONEMPTY, check_source),
    STR("kafka", "sasl_password_file", kafka_sasl_password_file, "", 0, NULL),
    STR("kafka", "topic.requests", topic_requests, "vd.requests", 0, check_topic),
    STR("kafka", "topic.volunteers", topic_volunteers, "vd.volunteers", 0, check_topic),
    STR("kafka", "topic.responses", topic_responses, "vd.responses", 0, check_topic),
    STR("kafka", "topic.assignments", topic_assignments, "vd.assignments", 0, check_topic),
    STR("kafka", "topic.notifications", topic_notifications, "vd.notifications", 0, check_topic),
    STR("kafka", "topic.deadletter", topic_deadletter, "vd.deadletter", 0, check_topic),

    STR("redis", "host", redis_host, "127.0.0.1", 0, NULL),
    INT("redis", "port", redis_port, "6379", 1, 65535),
    STR("redis", "unix_socket", redis_unix_socket, "", 0, NULL),
    STR("redis", "password", redis_password, "", F_SECRET, NULL),
    STR("redis", "password_file", redis_password_file, "", 0, NULL),
    STR("redis", "user", redis_user, "", 0, NULL),
    INT("redis", "db", redis_db, "0", 0, 15),
    STR("redis", "key_prefix", redis_key_prefix, "vd:", 0, check_key_prefix),
    INT("redis", "connect_timeout_ms", redis_connect_timeout_ms, "2000", 100, 60000),
    INT("redis", "command_timeout_ms", redis_command_timeout_ms, "3000", 100, 60000),
    INT("redis", "request_ttl_s", redis_request_ttl_s, "604800", 60, 31536000),
    INT("redis", "volunteer_ttl_s", redis_volunteer_ttl_s, "86400", 1, 31536000),

    INT("matching", "radius_start_m", radius_start_m, "500", 10, 100000),
    INT("matching", "radius_max_m", radius_max_m, "5000", 10, 100000),
    INT("matching", "candidates", candidates, "8", 1, 100),
    INT("matching", "offer_timeout_ms", offer_timeout_ms, "120000", 0, 86400000),
    INT("matching", "max_offers", max_offers, "5", 1, 50),
    INT("matching", "schedule_lead_ms", schedule_lead_ms, "0", 0, 86400000),
    INT("matching", "batch_window_ms", batch_window_ms, "0", 0, 60000),
    INT("matching", "max_tasks_per_day", max_tasks_per_day, "4", 1, 100),
    INT("matching", "task_timeout_s", task_timeout_s, "28800", 1, 604800),
    INT("matching", "schedule_horizon_s", schedule_horizon_s, "2592000", 60, 31536000),
    INT("matching", "max_search_points", max_search_points, "1000", 0, 1000000),
    INT("matching", "urgent_window_ms", urgent_window_ms, "60000", 0, 60000),
    INT("matching", "max_round", max_round, "256", 1, 10000),
    INT("matching", "need_urgent", need_urgent, "300", 0, 100000),
    INT("matching", "need_high", need_high, "200", 0, 100000),
    INT("matching", "need_normal", need_normal, "100", 0, 100000),
    INT("matching", "need_low", need_low, "0", 0, 100000),
    INT("matching", "need_per_decade_over_60", need_per_decade_over_60, "10", 0, 100000),
    INT("matching", "need_lives_alone", need_lives_alone, "20", 0, 100000),
    INT("matching", "need_low_income", need_low_income, "15", 0, 100000),
    INT("matching", "need_disability", need_disability, "25", 0, 100000),
    INT("matching", "load_cost_m", load_cost_m, "150", 0, 100000),
    INT("matching", "continuity_bonus_m", continuity_bonus_m, "300", 0, 100000),
    INT("matching", "continuity_days", continuity_days, "90", 1, 3650),

    STR("http", "listen", http_listen, "127.0.0.1:9464", 0, check_listen),
    STR("http", "desk_token", desk_token, "", F_SECRET, check_token),
    STR("http", "desk_token_file", desk_token_file, "", 0, NULL),
    STR("http", "desk_tiles", desk_tiles, "", 0, check_tiles),

    ENUM("log", "level", log_level, "info", &level_enum),
    ENUM("log", "format", log_format, "json", &format_enum),
    STR("log", "file", log_file, "", 0, NULL),

    INT("daemon", "max_inflight", max_inflight, "700", 1, 1000000),
    INT("daemon", "shutdown_timeout_ms", shutdown_timeout_ms, "8000", 100, 60000),
    INT("daemon", "partition_concurrency", partition_concurrency, "16", 1, 256),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* The sections in the order they are dumped. */
static const char *const sections[] = {"kafka", "redis", "matching", "http", "log", "daemon"};
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

static const char consumer_prefix[] = "consumer.";
static const char producer_prefix[] = "producer.";

/* ---- small helpers ---------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Returns a malloc'd formatted string, or NULL. */
static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static char **str_field(struct vd_config *cfg, const struct key_def *k) {
    return (char **)(void *)((char *)cfg + k->offset);
}

static int *int_field(struct vd_config *cfg, const struct key_def *k) {
    return (int *)(void *)((char *)cfg + k->offset);
}

static const char *str_value(const struct vd_config *cfg, const struct key_def *k) {
    return *(char *const *)(const void *)((const char *)cfg + k->offset);
}

static int int_value(const struct vd_config *cfg, const struct key_def *k) {
    return *(const int *)(const void *)((const char *)cfg + k->offset);
}

static int is_section(const char *name, size_t len) {
    for (size_t i = 0; i < NSECTIONS; i++)
        if (strlen(sections[i]) == len && memcmp(sections[i], name, len) == 0) return 1;
    return 0;
}

static const struct key_def *find_key(const char *section, const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Edit distance between two short strings (insert, delete, substitute), capped inputs. */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return (size_t)-1;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(size_t) * (lb + 1));
    }
    return prev[lb];
}

/* Writes a hint for an unknown key into buf ("" if none): the section the key belongs to, or
 * the closest known key. */
static void unknown_key_hint(const char *section, const char *key, char *buf, size_t buflen) {
    buf[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].key, key) == 0) {
            snprintf(buf, buflen, " (it belongs in [%s])", keys[i].section);
            return;
        }
    }
    char full[160];
    snprintf(full, sizeof(full), "%s.%s", section, key);
    size_t best = 3;
    for (size_t i = 0; i < NKEYS; i++) {
        char cand[160];
        snprintf(cand, sizeof(cand), "%s.%s", keys[i].section, keys[i].key);
        size_t d = edit_distance(full, cand);
        if (d < best) {
            best = d;
            snprintf(buf, buflen, " (did you mean %s?)", cand);
        }
    }
}

/* ---- value checks ----------------------------------------------------------------------- */

static int check_topic(const char *value, char *msg, size_t msglen) {
    size_t n = strlen(value);
    int ok = n >= 1 && n <= 249 && strcmp(value, ".") != 0 && strcmp(value, "..") != 0;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        ok = isalnum(c) || c == '.' || c == '_' || c == '-';
    }
    if (ok) return 0;
    set_err(msg, msglen, "'%.*s' is not a Kafka topic name (1-249 characters of A-Za-z0-9._-)",
            VALUE_SHOWN, value);
    return -1;
}

static int check_key_prefix(const char *value, char *msg, size_t msglen) {
    size_t n = strlen(value);
    int ok = n >= 1 && n <= 32;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        ok = isalnum(c) || strchr("._:{}-", c) != NULL;
    }
    if (!ok) {
        set_err(msg, msglen, "'%.*s' must be 1-32 characters of A-Za-z0-9._:{}-", VALUE_SHOWN, value);
        return -1;
    }
    /* Keys are prefix + a word without ':' + '/' + IDs: a prefix that ends with ':' can never
     * reach the keys of a deployment whose prefix is longer or shorter. */
    if (value[n - 1] != ':') {
        set_err(msg, msglen, "'%.*s' must end with ':' (so that no deployment's keys reach "
                "another's)", VALUE_SHOWN, value);
        return -1;
    }
    return 0;
}

/* Parses a decimal integer: optional sign, digits only. Returns 0, -1 if it is not an
 * integer, -2 if it does not fit in a long long. */
static int parse_int(const char *s, long long *out) {
    const char *p = s;
    if (*p == '-' || *p == '+') p++;
    if (*p == '\0') return -1;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE) return -2;
    if (*end != '\0') return -1;
    *out = v;
    return 0;
}

/* "" (disabled), "host:port" or "[v6addr]:port", port 1..65535. */
/* The desk's token: empty (the desk is read-only), or 16 to 256 printable ASCII characters
 * without spaces (it travels in an Authorization header). */
static int check_token(const char *value, char *msg, size_t msglen) {
    size_t n = strlen(value);
    int ok = n == 0 || (n >= 16 && n <= 256);
    for (size_t i = 0; ok && i < n; i++) ok = value[i] > 0x20 && value[i] < 0x7f;
    if (ok) return 0;
    set_err(msg, msglen, "must be empty (read-only desk) or 16 to 256 printable characters "
                         "without spaces (%zu given)", n);
    return -1;
}

/* A tile URL template for the desk's map: http(s)://... with {z}, {x} and {y}. */
static int check_tiles(const char *value, char *msg, size_t msglen) {
    if (*value == '\0') return 0;
    int ok = (strncmp(value, "https://", 8) == 0 || strncmp(value, "http://", 7) == 0) &&
             strstr(value, "{z}") && strstr(value, "{x}") && strstr(value, "{y}") &&
             !strpbrk(value, " \"'<>\\");
    if (ok) return 0;
    set_err(msg, msglen, "'%.*s' is not an http(s) URL template with {z}, {x} and {y} "
                         "(empty = the map is drawn from the data alone)", VALUE_SHOWN, value);
    return -1;
}

/* The CloudEvents source of the daemon's outputs: a URI-reference, here 1 to 200 printable
 * ASCII characters without spaces (the desk's events add "/desk", and an input's source may
 * be 256 long at most). */
static int check_source(const char *value, char *msg, size_t msglen) {
    size_t n = strlen(value);
    int ok = n >= 1 && n <= 200;
    for (size_t i = 0; ok && i < n; i++) ok = value[i] > 0x20 && value[i] < 0x7f;
    if (ok) return 0;
    set_err(msg, msglen, "'%.*s' is not a URI-reference of 1 to 200 printable characters "
                         "without spaces", VALUE_SHOWN, value);
    return -1;
}

static int check_listen(const char *value, char *msg, size_t msglen) {
    if (*value == '\0') return 0;
    const char *colon = strrchr(value, ':');
    int ok = colon != NULL && colon != value;
    if (ok && value[0] == '[') ok = colon - value >= 3 && colon[-1] == ']';
    if (ok && value[0] != '[') ok = memchr(value, ':', (size_t)(colon - value)) == NULL;
    long long port = 0;
    if (ok) ok = parse_int(colon + 1, &port) == 0 && colon[1] >= '0' && colon[1] <= '9' &&
                 port >= 1 && port <= 65535;
    if (ok) return 0;
    set_err(msg, msglen, "'%.*s' is not host:port with a port in 1..65535 (empty = disabled)",
            VALUE_SHOWN, value);
    return -1;
}

/* Checks that an int value is within the key's bounds. */
static int check_range(const struct key_def *k, long long v, char *msg, size_t msglen) {
    if (v >= k->min && v <= k->max) return 0;
    set_err(msg, msglen, "%lld is out of range (%lld..%lld)", v, k->min, k->max);
    return -1;
}

/* Writes "debug|info|warn|error" for an enum into buf. */
static void enum_choices(const struct enum_def *e, char *buf, size_t buflen) {
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < e->n && o < buflen; i++) {
        int w = snprintf(buf + o, buflen - o, "%s%s", i ? "|" : "", e->names[i]);
        if (w < 0) break;
        o += (size_t)w;
    }
}

/* Parses and stores one value. Returns 0; -1 with a sentence in msg (about the value only, the
 * caller adds where and which key); -2 on allocation failure. */
static int apply_value(struct vd_config *cfg, const struct key_def *k, const char *value,
                       char *msg, size_t msglen) {
    switch (k->type) {
    case T_STRING: {
        if ((k->flags & F_NONEMPTY) && *value == '\0') {
            set_err(msg, msglen, "must not be empty");
            return -1;
        }
        if (k->check && k->check(value, msg, msglen) != 0) return -1;
        char *copy = strdup(value);
        if (!copy) return -2;
        char **field = str_field(cfg, k);
        free(*field);
        *field = copy;
        return 0;
    }
    case T_INT: {
        long long v = 0;
        if (*value == '\0') {
            set_err(msg, msglen, "empty value, expected an integer");
            return -1;
        }
        int rc = parse_int(value, &v);
        if (rc == -1) {
            set_err(msg, msglen, "'%.*s' is not an integer", VALUE_SHOWN, value);
            return -1;
        }
        if (rc == -2) {
            set_err(msg, msglen, "'%.*s' is out of range (%lld..%lld)", VALUE_SHOWN, value,
                    k->min, k->max);
            return -1;
        }
        if (check_range(k, v, msg, msglen) != 0) return -1;
        *int_field(cfg, k) = (int)v;
        return 0;
    }
    case T_ENUM: {
        int v = k->enums->parse(value);
        if (v < 0 || v >= k->enums->n) {
            char choices[128];
            enum_choices(k->enums, choices, sizeof(choices));
            set_err(msg, msglen, "'%.*s' is not one of %s", VALUE_SHOWN, value, choices);
            return -1;
        }
        *int_field(cfg, k) = v;
        return 0;
    }
    }
    set_err(msg, msglen, "unsupported key type");
    return -1;
}

/* ---- pass-through properties ------------------------------------------------------------ */

/* Sets or replaces one property. Returns 0 or -1 (out of memory; props unchanged). */
static int props_set(struct vd_config_props *p, const char *name, const char *value,
                     const char *origin) {
    char *v = strdup(value), *o = strdup(origin), *n = NULL;
    if (!v || !o) goto err;
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->v[i].name, name) == 0) {
            free(p->v[i].value);
            free(p->v[i].origin);
            p->v[i].value = v;
            p->v[i].origin = o;
            return 0;
        }
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        struct vd_config_prop *nv = realloc(p->v, cap * sizeof(*nv));
        if (!nv) goto err;
        p->v = nv;
        p->cap = cap;
    }
    n = strdup(name);
    if (!n) goto err;
    p->v[p->n].name = n;
    p->v[p->n].value = v;
    p->v[p->n].origin = o;
    p->n++;
    return 0;
err:
    free(v);
    free(o);
    free(n);
    return -1;
}

static void props_free(struct vd_config_props *p) {
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].name);
        free(p->v[i].value);
        free(p->v[i].origin);
    }
    free(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

/* A property whose value is a credential, masked in dumps. */
static int prop_is_secret(const char *name) {
    return strstr(name, "password") || strstr(name, "secret") || strstr(name, "jaas");
}

/* ---- setting one key -------------------------------------------------------------------- */

/* Sets section.key = value. `where` prefixes error messages ("FILE:LINE" or "--set a=b"),
 * `origin` is recorded with pass-through properties. Returns 0 or -1 with err. */
static int set_key(struct vd_config *cfg, const char *section, const char *key, const char *value,
                   const char *where, const char *origin, char *err, size_t errlen) {
    if (*key == '\0') {
        set_err(err, errlen, "%s: missing key name before '=' in [%s]", where, section);
        return -1;
    }
    if (strcmp(section, "kafka") == 0 &&
        (starts_with(key, consumer_prefix) || starts_with(key, producer_prefix))) {
        int consumer = starts_with(key, consumer_prefix);
        const char *name = key + (consumer ? sizeof(consumer_prefix) : sizeof(producer_prefix)) - 1;
        if (*name == '\0') {
            set_err(err, errlen, "%s: kafka.%s: missing librdkafka property name", where, key);
            return -1;
        }
        if (props_set(consumer ? &cfg->consumer_props : &cfg->producer_props, name, value,
                      origin) != 0) {
            set_err(err, errlen, "%s: kafka.%s: out of memory", where, key);
            return -1;
        }
        return 0;
    }
    const struct key_def *k = find_key(section, key);
    if (!k) {
        char hint[200];
        unknown_key_hint(section, key, hint, sizeof(hint));
        set_err(err, errlen, "%s: unknown key %s.%s%s", where, section, key, hint);
        return -1;
    }
    char msg[256];
    int rc = apply_value(cfg, k, value, msg, sizeof(msg));
    if (rc == -2) {
        set_err(err, errlen, "%s: %s.%s: out of memory", where, section, key);
        return -1;
    }
    if (rc != 0) {
        set_err(err, errlen, "%s: %s.%s: %s", where, section, key, msg);
        return -1;
    }
    return 0;
}

/* ---- public: init / free ---------------------------------------------------------------- */

int vd_config_init(struct vd_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++) {
        char msg[256];
        if (apply_value(cfg, &keys[i], keys[i].def, msg, sizeof(msg)) != 0) {
            vd_config_free(cfg);
            return -1;
        }
    }
    return 0;
}

void vd_config_free(struct vd_config *cfg) {
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type != T_STRING) continue;
        char **field = str_field(cfg, &keys[i]);
        free(*field);
        *field = NULL;
    }
    props_free(&cfg->consumer_props);
    props_free(&cfg->producer_props);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- public: load a file ---------------------------------------------------------------- */

struct load_state {
    struct vd_config *cfg;
    const char *path;
    const char *buf; /* the whole file */
    size_t len, pos;
    int lineno;   /* line last handed to libinih */
    int err_line; /* line of the first error we found, 0 if none */
    char *err;
    size_t errlen;
};

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Finds the part of a raw line libinih should see (see the notes at the top of this file). */
static void normalize_line(const char *line, size_t len, int first, const char **out,
                           size_t *outlen) {
    if (first && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
        line += 3;
        len -= 3;
    }
    while (len > 0 && is_blank(*line)) {
        line++;
        len--;
    }
    if (len > 0 && (*line == ';' || *line == '#')) len = 0;
    for (size_t i = 1; i < len; i++) {
        if (line[i] == ';' && is_blank(line[i - 1])) {
            len = i;
            break;
        }
    }
    while (len > 0 && is_blank(line[len - 1])) len--;
    *out = line;
    *outlen = len;
}

/* Returns the raw line number `lineno` (1-based) of the file. */
static void raw_line(const struct load_state *st, int lineno, const char **line, size_t *len) {
    const char *p = st->buf, *end = st->buf + st->len;
    for (int i = 1; i < lineno && p < end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl ? nl + 1 : end;
    }
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    *line = p;
    *len = (size_t)((nl ? nl : end) - p);
}

static void record_error(struct load_state *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void record_error(struct load_state *st, const char *fmt, ...) {
    if (st->err_line) return;
    st->err_line = st->lineno;
    if (st->err && st->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->err, st->errlen, fmt, ap);
        va_end(ap);
    }
}

/* fgets-style reader for ini_parse_stream: hands out one normalised line per call. */
static char *read_line(char *str, int num, void *stream) {
    struct load_state *st = stream;
    if (st->err_line || st->pos >= st->len || num < 3) return NULL;
    const char *line = st->buf + st->pos;
    const char *nl = memchr(line, '\n', st->len - st->pos);
    size_t rawlen = (size_t)((nl ? nl : st->buf + st->len) - line);
    st->pos += rawlen + (nl ? 1 : 0);
    st->lineno++;

    if (memchr(line, '\0', rawlen)) {
        record_error(st, "%s:%d: NUL byte in line", st->path, st->lineno);
        return NULL;
    }
    const char *text;
    size_t len;
    normalize_line(line, rawlen, st->lineno == 1, &text, &len);

    if (len > 0 && text[0] == '[') {
        const char *rb = memchr(text, ']', len);
        if (rb) { /* without ']', libinih reports the syntax error */
            const char *name = text + 1;
            size_t nlen = (size_t)(rb - name);
            if (rb + 1 != text + len) {
                record_error(st, "%s:%d: unexpected text after [%.*s]", st->path, st->lineno,
                             (int)nlen, name);
                return NULL;
            }
            if (!is_section(name, nlen)) {
                record_error(st, "%s:%d: unknown section [%.*s]", st->path, st->lineno,
                             (int)nlen, name);
                return NULL;
            }
        }
    }
    if (len + 2 > (size_t)num) {
        record_error(st, "%s:%d: line is longer than %d characters (use --set for long values)",
                     st->path, st->lineno, num - 2);
        return NULL;
    }
    memcpy(str, text, len);
    str[len] = '\n';
    str[len + 1] = '\0';
    return str;
}

static int on_pair(void *user, const char *section, const char *name, const char *value) {
    struct load_state *st = user;
    if (st->err_line) return 0;
    if (!name) return 1; /* libinih builds that report new sections: checked by the reader */
    if (!value) {
        record_error(st, "%s:%d: %s.%s: missing '= value'", st->path, st->lineno, section, name);
        return 0;
    }
    if (*section == '\0') {
        record_error(st, "%s:%d: key %s is outside any [section]", st->path, st->lineno, name);
        return 0;
    }
    char *where = str_printf("%s:%d", st->path, st->lineno);
    if (!where) {
        record_error(st, "%s:%d: out of memory", st->path, st->lineno);
        return 0;
    }
    char msg[512];
    int rc = set_key(st->cfg, section, name, value, where, where, msg, sizeof(msg));
    free(where);
    if (rc != 0) {
        record_error(st, "%s", msg);
        return 0;
    }
    return 1;
}

/* Reads the whole file into a malloc'd buffer. Returns 0 or -1 with err. */
static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) goto nomem;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE_BYTES) {
                set_err(err, errlen, "%s: larger than %d bytes", path, MAX_FILE_BYTES);
                goto fail;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) goto nomem;
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, fp);
        len += n;
        if (n == 0) break;
    }
    if (ferror(fp)) {
        set_err(err, errlen, "%s: read error", path);
        goto fail;
    }
    fclose(fp);
    *out = buf;
    *outlen = len;
    return 0;
nomem:
    set_err(err, errlen, "%s: out of memory", path);
fail:
    free(buf);
    fclose(fp);
    return -1;
}

int vd_config_load_file(struct vd_config *cfg, const char *path, char *err, size_t errlen) {
    char *buf = NULL;
    size_t len = 0;
    if (read_file(path, &buf, &len, err, errlen) != 0) return -1;

    struct load_state st = {.cfg = cfg, .path = path, .buf = buf, .len = len,
                            .err = err, .errlen = errlen};
    int rc = ini_parse_stream(read_line, &st, on_pair, &st);
    int ret = 0;
    if (rc == -2) {
        set_err(err, errlen, "%s: out of memory", path);
        ret = -1;
    } else if (rc > 0 && (st.err_line == 0 || rc < st.err_line)) {
        /* libinih's own syntax error, earlier than any error of ours. */
        const char *raw, *text;
        size_t rawlen, tlen;
        raw_line(&st, rc, &raw, &rawlen);
        normalize_line(raw, rawlen, rc == 1, &text, &tlen);
        if (tlen > 0 && text[0] == '[')
            set_err(err, errlen, "%s:%d: syntax error: section header without closing ']'",
                    path, rc);
        else
            set_err(err, errlen, "%s:%d: syntax error: expected 'key = value' or '[section]'",
                    path, rc);
        ret = -1;
    } else if (st.err_line || rc != 0) {
        if (!st.err_line) set_err(err, errlen, "%s: cannot parse", path);
        ret = -1;
    }
    free(buf);
    return ret;
}

/* ---- public: --set ---------------------------------------------------------------------- */

static void trim(const char **s, size_t *len) {
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1])) (*len)--;
}

int vd_config_set(struct vd_config *cfg, const char *assignment, char *err, size_t errlen) {
    const char *eq = strchr(assignment, '=');
    const char *lhs = assignment, *rhs = eq ? eq + 1 : NULL;
    size_t lhslen = eq ? (size_t)(eq - assignment) : 0, rhslen = rhs ? strlen(rhs) : 0;
    if (eq) {
        trim(&lhs, &lhslen);
        trim(&rhs, &rhslen);
    }
    const char *dot = eq ? memchr(lhs, '.', lhslen) : NULL;
    if (!dot || dot == lhs || dot + 1 == lhs + lhslen) {
        set_err(err, errlen, "--set %s: expected section.key=value", assignment);
        return -1;
    }
    char *section = strndup(lhs, (size_t)(dot - lhs));
    char *key = strndup(dot + 1, (size_t)(lhs + lhslen - dot - 1));
    char *value = strndup(rhs, rhslen);
    char *where = str_printf("--set %s", assignment);
    int ret = -1;
    if (!section || !key || !value || !where) {
        set_err(err, errlen, "--set %s: out of memory", assignment);
        goto out;
    }
    if (!is_section(section, strlen(section))) {
        set_err(err, errlen, "%s: unknown section [%s]", where, section);
        goto out;
    }
    ret = set_key(cfg, section, key, value, where, "--set", err, errlen);
out:
    free(section);
    free(key);
    free(value);
    free(where);
    return ret;
}

/* ---- public: validate ------------------------------------------------------------------- */

/* Reads a secret from path: absolute, or relative to $CREDENTIALS_DIRECTORY (systemd's
 * LoadCredential=) when that is set. The file must not be readable by others; its first line
 * is the secret. Returns a new string, or NULL with err naming the key. */
static char *read_secret(const char *key, const char *path, char *err, size_t errlen) {
    char full[4096];
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (path[0] != '/' && creds && *creds)
        snprintf(full, sizeof full, "%s/%s", creds, path);
    else
        snprintf(full, sizeof full, "%s", path);
    FILE *f = fopen(full, "r");
    if (!f) {
        set_err(err, errlen, "%s: %s: %s", key, full, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & S_IROTH)) {
        fclose(f);
        set_err(err, errlen, "%s: %s is readable by every user; chmod o-r it (a secret must not be)",
                key, full);
        return NULL;
    }
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (got) line[strcspn(line, "\r\n")] = '\0';
    if (!got || !line[0]) {
        set_err(err, errlen, "%s: %s is empty", key, full);
        return NULL;
    }
    char *s = strdup(line);
    memset(line, 0, sizeof line);
    if (!s) set_err(err, errlen, "out of memory");
    return s;
}

int vd_config_read_secrets(struct vd_config *cfg, char *err, size_t errlen) {
    struct {
        const char *key, *inline_key;
        char **path, **target; /* target NULL: the Kafka SASL password */
    } files[] = {
        {"redis.password_file", "redis.password", &cfg->redis_password_file, &cfg->redis_password},
        {"http.desk_token_file", "http.desk_token", &cfg->desk_token_file, &cfg->desk_token},
        {"kafka.sasl_password_file", NULL, &cfg->kafka_sasl_password_file, NULL},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!*files[i].path || !**files[i].path) continue;
        if (files[i].target && **files[i].target) {
            set_err(err, errlen, "%s and %s are both set: keep one (the file)", files[i].inline_key,
                    files[i].key);
            return -1;
        }
        char *secret = read_secret(files[i].key, *files[i].path, err, errlen);
        if (!secret) return -1;
        if (files[i].target) {
            free(*files[i].target);
            *files[i].target = secret;
            continue;
        }
        int rc = props_set(&cfg->consumer_props, "sasl.password", secret, files[i].key) |
                 props_set(&cfg->producer_props, "sasl.password", secret, files[i].key);
        memset(secret, 0, strlen(secret));
        free(secret);
        if (rc) {
            set_err(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

int vd_config_validate(const struct vd_config *cfg, char *err, size_t errlen) {
    char msg[256];
    /* Every key on its own: the same rules as when it is set (fields may be set directly). */
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key_def *k = &keys[i];
        int bad = 0;
        if (k->type == T_STRING) {
            const char *v = str_value(cfg, k);
            if (!v) {
                set_err(msg, sizeof(msg), "not set");
                bad = 1;
            } else if ((k->flags & F_NONEMPTY) && *v == '\0') {
                set_err(msg, sizeof(msg), "must not be empty");
                bad = 1;
            } else if (k->check) {
                bad = k->check(v, msg, sizeof(msg)) != 0;
            }
        } else if (k->type == T_INT) {
            bad = check_range(k, int_value(cfg, k), msg, sizeof(msg)) != 0;
        } else if (k->type == T_ENUM) {
            int v = int_value(cfg, k);
            if (v < 0 || v >= k->enums->n) {
                set_err(msg, sizeof(msg), "%d is not a valid value", v);
                bad = 1;
            }
        }
        if (bad) {
            set_err(err, errlen, "%s.%s: %s", k->section, k->key, msg);
            return -1;
        }
    }
    if (cfg->radius_start_m > cfg->radius_max_m) {
        set_err(err, errlen,
                "matching.radius_start_m (%d) must not be greater than matching.radius_max_m (%d)",
                cfg->radius_start_m, cfg->radius_max_m);
        return -1;
    }
    /* Each input topic is read for its own event types: it must not be shared with another
     * input or with an output (the daemon would consume its own output). Outputs may share. */
    struct {
        const char *key;
        const char *topic;
        int input;
    } topics[] = {
        {"kafka.topic.requests", cfg->topic_requests, 1},
        {"kafka.topic.volunteers", cfg->topic_volunteers, 1},
        {"kafka.topic.responses", cfg->topic_responses, 1},
        {"kafka.topic.assignments", cfg->topic_assignments, 0},
        {"kafka.topic.notifications", cfg->topic_notifications, 0},
        {"kafka.topic.deadletter", cfg->topic_deadletter, 0},
    };
    size_t ntopics = sizeof(topics) / sizeof(topics[0]);
    for (size_t i = 0; i < ntopics; i++) {
        for (size_t j = i + 1; j < ntopics; j++) {
            if (!topics[i].input && !topics[j].input) continue;
            if (strcmp(topics[i].topic, topics[j].topic) == 0) {
                set_err(err, errlen,
                        "%s and %s are both '%s': an input topic must differ from every other "
                        "topic",
                        topics[i].key, topics[j].key, topics[i].topic);
                return -1;
            }
        }
    }
    if (cfg->redis_host[0] == '\0' && cfg->redis_unix_socket[0] == '\0') {
        set_err(err, errlen, "redis.host and redis.unix_socket are both empty: set one of them");
        return -1;
    }
    if (cfg->redis_user[0] != '\0' && cfg->redis_password[0] == '\0') {
        set_err(err, errlen, "redis.user is set but redis.password is empty: AUTH needs both");
        return -1;
    }
    return 0;
}

/* ---- public: dump ----------------------------------------------------------------------- */

struct out {
    char *buf;
    size_t cap;
    size_t len; /* bytes that would have been written */
};

static void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *dst = o->len < o->cap ? o->buf + o->len : NULL;
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(dst, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

static void dump_pair(struct out *o, const char *key, const char *value) {
    if (*value)
        out_printf(o, "%s = %s\n", key, value);
    else
        out_printf(o, "%s =\n", key);
}

static void dump_props(struct out *o, const char *prefix, const struct vd_config_props *p) {
    for (size_t i = 0; i < p->n; i++) {
        char key[256];
        snprintf(key, sizeof(key), "%s%s", prefix, p->v[i].name);
        const char *v = p->v[i].value;
        dump_pair(o, key, prop_is_secret(p->v[i].name) && *v ? "***" : v);
    }
}

int vd_config_dump(const struct vd_config *cfg, char *buf, size_t buflen) {
    struct out o = {buf, buflen, 0};
    if (buf && buflen) buf[0] = '\0';
    for (size_t s = 0; s < NSECTIONS; s++) {
        out_printf(&o, "%s[%s]\n", s ? "\n" : "", sections[s]);
        for (size_t i = 0; i < NKEYS; i++) {
            const struct key_def *k = &keys[i];
            if (strcmp(k->section, sections[s]) != 0) continue;
            if (k->type == T_STRING) {
                const char *v = str_value(cfg, k);
                if (!v) v = "";
                dump_pair(&o, k->key, (k->flags & F_SECRET) && *v ? "***" : v);
            } else if (k->type == T_INT) {
                out_printf(&o, "%s = %d\n", k->key, int_value(cfg, k));
            } else {
                int v = int_value(cfg, k);
                dump_pair(&o, k->key, v >= 0 && v < k->enums->n ? k->enums->names[v] : "?");
            }
        }
        if (strcmp(sections[s], "kafka") == 0) {
            dump_props(&o, consumer_prefix, &cfg->consumer_props);
            dump_props(&o, producer_prefix, &cfg->producer_props);
        }
    }
    return o.len > INT_MAX ? INT_MAX : (int)o.len;
}
