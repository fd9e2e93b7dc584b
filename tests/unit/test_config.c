/* Unit tests for vd_config: defaults, file loading, error messages, --set, validation, dump.
 *
 * The data files live in tests/data/config/; each bad_*.conf has one fault at a known line,
 * and the test checks that the message names the file, that line and the key. */
#define _POSIX_C_SOURCE 200809L /* strdup, mkstemp, fdopen */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vd_config.h"
#include "vd_log.h"

#define CONF_DIR VD_TEST_DATA "/config/"
#define EXAMPLE_CONF VD_TEST_DATA "/../../config/vdispatch.conf"

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

static void assert_starts_with(const char *s, const char *prefix) {
    if (strncmp(s, prefix, strlen(prefix)) != 0)
        fail_msg("expected \"%s\" to start with \"%s\"", s, prefix);
}

/* Returns a malloc'd dump of cfg. */
static char *dump_alloc(const struct vd_config *cfg) {
    int n = vd_config_dump(cfg, NULL, 0);
    assert_true(n > 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(vd_config_dump(cfg, buf, (size_t)n + 1), n);
    assert_int_equal(strlen(buf), (size_t)n);
    return buf;
}

static const struct vd_config_prop *find_prop(const struct vd_config_props *p, const char *name) {
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->v[i].name, name) == 0) return &p->v[i];
    return NULL;
}

/* ---- defaults ----------------------------------------------------------------------------- */

static void test_defaults(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_string_equal(cfg.kafka_brokers, "127.0.0.1:9092");
    assert_string_equal(cfg.kafka_group_id, "vdispatch");
    assert_string_equal(cfg.topic_requests, "vd.requests");
    assert_string_equal(cfg.topic_volunteers, "vd.volunteers");
    assert_string_equal(cfg.topic_responses, "vd.responses");
    assert_string_equal(cfg.topic_assignments, "vd.assignments");
    assert_string_equal(cfg.topic_notifications, "vd.notifications");
    assert_string_equal(cfg.topic_deadletter, "vd.deadletter");
    assert_int_equal(cfg.consumer_props.n, 0);
    assert_int_equal(cfg.producer_props.n, 0);
    assert_string_equal(cfg.redis_host, "127.0.0.1");
    assert_int_equal(cfg.redis_port, 6379);
    assert_string_equal(cfg.redis_unix_socket, "");
    assert_string_equal(cfg.redis_password, "");
    assert_string_equal(cfg.redis_user, "");
    assert_int_equal(cfg.redis_db, 0);
    assert_string_equal(cfg.redis_key_prefix, "vd:");
    assert_int_equal(cfg.redis_connect_timeout_ms, 2000);
    assert_int_equal(cfg.redis_command_timeout_ms, 3000);
    assert_int_equal(cfg.redis_request_ttl_s, 604800);
    assert_int_equal(cfg.radius_start_m, 500);
    assert_int_equal(cfg.radius_max_m, 5000);
    assert_int_equal(cfg.candidates, 8);
    assert_int_equal(cfg.offer_timeout_ms, 120000);
    assert_int_equal(cfg.max_offers, 5);
    assert_int_equal(cfg.batch_window_ms, 0);
    assert_int_equal(cfg.max_tasks_per_day, 4);
    assert_string_equal(cfg.http_listen, "127.0.0.1:9464");
    assert_int_equal(cfg.log_level, VD_LOG_INFO);
    assert_int_equal(cfg.log_format, VD_LOG_FORMAT_JSON);
    assert_string_equal(cfg.log_file, "");
    assert_int_equal(cfg.max_inflight, 700);
    assert_int_equal(cfg.shutdown_timeout_ms, 8000);
    assert_int_equal(cfg.partition_concurrency, 16);
    if (vd_config_validate(&cfg, err, sizeof(err)) != 0) fail_msg("defaults invalid: %s", err);
    vd_config_free(&cfg);
    /* free leaves a zeroed struct: a second free is harmless. */
    assert_null(cfg.kafka_brokers);
    vd_config_free(&cfg);
}

/* ---- a good file -------------------------------------------------------------------------- */

static void test_good_file(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    const char *path = CONF_DIR "good.conf";
    assert_int_equal(vd_config_init(&cfg), 0);
    if (vd_config_load_file(&cfg, path, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_string_equal(cfg.kafka_brokers, "k1:9092,k2:9092"); /* inline comment removed */
    assert_string_equal(cfg.kafka_group_id, "vd-test");
    assert_string_equal(cfg.topic_requests, "t.requests");
    assert_string_equal(cfg.topic_volunteers, "t.volunteers");
    assert_string_equal(cfg.topic_responses, "t.responses");     /* indented with spaces */
    assert_string_equal(cfg.topic_assignments, "t.assignments"); /* indented with a tab */
    assert_string_equal(cfg.topic_notifications, "t.notifications");
    assert_string_equal(cfg.topic_deadletter, "t.dead");
    assert_string_equal(cfg.redis_host, "redis.internal");
    assert_int_equal(cfg.redis_port, 6380);
    assert_string_equal(cfg.redis_unix_socket, "");
    assert_string_equal(cfg.redis_password, "pw;with;semicolons"); /* ';' without space kept */
    assert_string_equal(cfg.redis_user, "dispatcher");
    assert_int_equal(cfg.redis_db, 3);
    assert_string_equal(cfg.redis_key_prefix, "{vd}:test:");
    assert_int_equal(cfg.redis_connect_timeout_ms, 1500);
    assert_int_equal(cfg.redis_command_timeout_ms, 2500);
    assert_int_equal(cfg.redis_request_ttl_s, 86400);
    assert_int_equal(cfg.radius_start_m, 300);
    assert_int_equal(cfg.radius_max_m, 9000); /* given twice: the later wins */
    assert_int_equal(cfg.candidates, 12);
    assert_int_equal(cfg.offer_timeout_ms, 0);
    assert_int_equal(cfg.max_offers, 7);
    assert_int_equal(cfg.batch_window_ms, 250);
    assert_int_equal(cfg.max_tasks_per_day, 6);
    assert_string_equal(cfg.http_listen, "[::1]:9100");
    assert_int_equal(cfg.log_level, VD_LOG_DEBUG);
    assert_int_equal(cfg.log_format, VD_LOG_FORMAT_TEXT);
    assert_string_equal(cfg.log_file, "/var/log/vdispatch.log");
    assert_int_equal(cfg.max_inflight, 500);
    assert_int_equal(cfg.shutdown_timeout_ms, 9000);
    if (vd_config_validate(&cfg, err, sizeof(err)) != 0) fail_msg("%s", err);
    vd_config_free(&cfg);
}

static void test_passthrough_props(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    const char *path = CONF_DIR "good.conf";
    assert_int_equal(vd_config_init(&cfg), 0);
    if (vd_config_load_file(&cfg, path, err, sizeof(err)) != 0) fail_msg("%s", err);

    /* security.protocol was set on line 13 and replaced on line 16, keeping its place. */
    assert_int_equal(cfg.consumer_props.n, 2);
    assert_string_equal(cfg.consumer_props.v[0].name, "security.protocol");
    assert_string_equal(cfg.consumer_props.v[0].value, "SSL");
    assert_string_equal(cfg.consumer_props.v[0].origin, CONF_DIR "good.conf:16");
    assert_string_equal(cfg.consumer_props.v[1].name, "sasl.password");
    assert_string_equal(cfg.consumer_props.v[1].value, "s3cret;x");
    assert_string_equal(cfg.consumer_props.v[1].origin, CONF_DIR "good.conf:14");
    assert_int_equal(cfg.producer_props.n, 1);
    assert_string_equal(cfg.producer_props.v[0].name, "linger.ms");
    assert_string_equal(cfg.producer_props.v[0].value, "5");
    assert_string_equal(cfg.producer_props.v[0].origin, CONF_DIR "good.conf:15");

    /* --set replaces a file property in place and records where it came from. */
    assert_int_equal(vd_config_set(&cfg, "kafka.consumer.security.protocol=PLAINTEXT", err,
                                   sizeof(err)), 0);
    assert_int_equal(cfg.consumer_props.n, 2);
    assert_string_equal(cfg.consumer_props.v[0].value, "PLAINTEXT");
    assert_string_equal(cfg.consumer_props.v[0].origin, "--set");
    /* ... and adds new ones at the end. */
    assert_int_equal(vd_config_set(&cfg, "kafka.producer.compression.type=lz4", err, sizeof(err)),
                     0);
    const struct vd_config_prop *p = find_prop(&cfg.producer_props, "compression.type");
    assert_non_null(p);
    assert_string_equal(p->value, "lz4");
    assert_string_equal(p->origin, "--set");
    assert_int_equal(cfg.producer_props.n, 2);
    /* Many properties: the array grows. */
    for (int i = 0; i < 40; i++) {
        char a[64];
        snprintf(a, sizeof(a), "kafka.consumer.x.%d=%d", i, i);
        assert_int_equal(vd_config_set(&cfg, a, err, sizeof(err)), 0);
    }
    assert_int_equal(cfg.consumer_props.n, 42);
    assert_string_equal(find_prop(&cfg.consumer_props, "x.39")->value, "39");
    vd_config_free(&cfg);
}

static void test_bom_crlf(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    if (vd_config_load_file(&cfg, CONF_DIR "good_bom_crlf.conf", err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg.redis_port, 7000);
    vd_config_free(&cfg);
}

/* ---- errors in files ---------------------------------------------------------------------- */

struct bad_case {
    const char *file;
    int line;
    const char *needles[3]; /* substrings the message must hold (key, reason) */
};

static const struct bad_case bad_cases[] = {
    {"bad_unknown_section.conf", 3, {"unknown section [foo]"}},
    {"bad_unknown_section_empty.conf", 3, {"unknown section [foo]"}},
    {"bad_unknown_key.conf", 4, {"unknown key redis.hots", "did you mean redis.host?"}},
    {"bad_wrong_section.conf", 2, {"unknown key redis.radius_max_m", "belongs in [matching]"}},
    {"bad_int.conf", 6, {"matching.radius_max_m: 'abc' is not an integer"}},
    {"bad_int_trailing.conf", 2, {"redis.port: '6379x' is not an integer"}},
    {"bad_int_hex.conf", 2, {"redis.port: '0x10' is not an integer"}},
    {"bad_int_overflow.conf", 2, {"matching.radius_max_m:", "out of range (10..100000)"}},
    {"bad_int_empty.conf", 3, {"redis.port: empty value"}},
    {"bad_range.conf", 3, {"redis.db: 16 is out of range (0..15)"}},
    {"bad_range_negative.conf", 2, {"matching.offer_timeout_ms: -1 is out of range"}},
    {"bad_enum.conf", 3, {"log.level: 'verbose' is not one of debug|info|warn|error"}},
    {"bad_enum_format.conf", 2, {"log.format: 'yaml' is not one of json|text"}},
    {"bad_syntax.conf", 3, {"syntax error", "key = value"}},
    {"bad_section_syntax.conf", 3, {"syntax error", "]"}},
    {"bad_section_trailing.conf", 1, {"unexpected text after [redis]"}},
    {"bad_outside_section.conf", 2, {"key port is outside any [section]"}},
    {"bad_key_prefix.conf", 2, {"redis.key_prefix: 'vd/'"}},
    {"bad_listen.conf", 2, {"http.listen: 'localhost' is not host:port"}},
    {"bad_desk_token.conf", 2, {"http.desk_token: must be empty (read-only desk) or 16 to 256"}},
    {"bad_desk_tiles.conf", 3, {"http.desk_tiles: 'ftp://tiles/{z}/{x}.png' is not an http(s) URL template"}},
    {"bad_source.conf", 2, {"kafka.source: 'has space' is not a URI-reference"}},
    {"bad_topic.conf", 2, {"kafka.topic.requests: 'has space' is not a Kafka topic name"}},
    {"bad_empty_brokers.conf", 2, {"kafka.brokers: must not be empty"}},
    {"bad_empty_prop.conf", 2, {"kafka.consumer.: missing librdkafka property name"}},
    {"bad_syntax_first.conf", 2, {"syntax error"}}, /* earlier than the unknown key on line 4 */
    {"bad_empty_key.conf", 2, {"missing key name"}},
    {"bad_long_line.conf", 2, {"line is longer than"}},
};

static void test_bad_files(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct vd_config cfg;
        char err[512] = "", path[512], prefix[600];
        snprintf(path, sizeof(path), "%s%s", CONF_DIR, c->file);
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, c->line);
        assert_int_equal(vd_config_init(&cfg), 0);
        if (vd_config_load_file(&cfg, path, err, sizeof(err)) == 0)
            fail_msg("%s: loaded without error", c->file);
        assert_starts_with(err, prefix);
        for (int j = 0; j < 3 && c->needles[j]; j++) assert_contains(err, c->needles[j]);
        vd_config_free(&cfg);
    }
}

static void test_missing_file(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "does-not-exist.conf", err, sizeof(err)),
                     -1);
    assert_contains(err, "does-not-exist.conf");
    assert_contains(err, "No such file");
    vd_config_free(&cfg);
}

/* An exact message, as an operator sees it. */
static void test_error_text(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "", want[600];
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "bad_int.conf", err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%sbad_int.conf:6: matching.radius_max_m: 'abc' is not an integer",
             CONF_DIR);
    assert_string_equal(err, want);
    vd_config_free(&cfg);
}

/* ---- --set -------------------------------------------------------------------------------- */

static void test_set(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "good.conf", err, sizeof(err)), 0);

    assert_int_equal(vd_config_set(&cfg, "matching.radius_max_m=7000", err, sizeof(err)), 0);
    assert_int_equal(cfg.radius_max_m, 7000);
    assert_int_equal(vd_config_set(&cfg, "  log.level = warn ", err, sizeof(err)), 0);
    assert_int_equal(cfg.log_level, VD_LOG_WARN);
    assert_int_equal(vd_config_set(&cfg, "kafka.topic.requests=x.req", err, sizeof(err)), 0);
    assert_string_equal(cfg.topic_requests, "x.req");
    assert_int_equal(vd_config_set(&cfg, "redis.password=", err, sizeof(err)), 0);
    assert_string_equal(cfg.redis_password, "");
    assert_int_equal(vd_config_set(&cfg, "redis.host=a=b", err, sizeof(err)), 0);
    assert_string_equal(cfg.redis_host, "a=b"); /* split at the first '=' */
    assert_int_equal(vd_config_set(&cfg, "http.listen=", err, sizeof(err)), 0);
    assert_string_equal(cfg.http_listen, "");
    assert_int_equal(vd_config_set(&cfg, "daemon.max_inflight=1", err, sizeof(err)), 0);
    assert_int_equal(cfg.max_inflight, 1);
    /* Values with " ;" are literal on the command line. */
    assert_int_equal(vd_config_set(&cfg, "log.file=/tmp/a ;b", err, sizeof(err)), 0);
    assert_string_equal(cfg.log_file, "/tmp/a ;b");

    assert_int_equal(vd_config_set(&cfg, "matching.foo=1", err, sizeof(err)), -1);
    assert_string_equal(err, "--set matching.foo=1: unknown key matching.foo");
    assert_int_equal(vd_config_set(&cfg, "redis.hots=x", err, sizeof(err)), -1);
    assert_string_equal(err, "--set redis.hots=x: unknown key redis.hots (did you mean redis.host?)");
    assert_int_equal(vd_config_set(&cfg, "matching.radius_max_m", err, sizeof(err)), -1);
    assert_string_equal(err, "--set matching.radius_max_m: expected section.key=value");
    assert_int_equal(vd_config_set(&cfg, "radius_max_m=1", err, sizeof(err)), -1);
    assert_contains(err, "expected section.key=value");
    assert_int_equal(vd_config_set(&cfg, ".x=1", err, sizeof(err)), -1);
    assert_contains(err, "expected section.key=value");
    assert_int_equal(vd_config_set(&cfg, "redis.=1", err, sizeof(err)), -1);
    assert_contains(err, "expected section.key=value");
    assert_int_equal(vd_config_set(&cfg, "foo.bar=1", err, sizeof(err)), -1);
    assert_string_equal(err, "--set foo.bar=1: unknown section [foo]");
    assert_int_equal(vd_config_set(&cfg, "matching.radius_max_m=abc", err, sizeof(err)), -1);
    assert_string_equal(err,
                        "--set matching.radius_max_m=abc: matching.radius_max_m: 'abc' is not an integer");
    assert_int_equal(vd_config_set(&cfg, "matching.candidates=101", err, sizeof(err)), -1);
    assert_contains(err, "matching.candidates: 101 is out of range (1..100)");
    assert_int_equal(vd_config_set(&cfg, "log.format=xml", err, sizeof(err)), -1);
    assert_contains(err, "log.format: 'xml' is not one of json|text");
    assert_int_equal(vd_config_set(&cfg, "kafka.producer.=1", err, sizeof(err)), -1);
    assert_contains(err, "missing librdkafka property name");
    assert_int_equal(vd_config_set(&cfg, "redis.key_prefix=", err, sizeof(err)), -1);
    assert_contains(err, "redis.key_prefix");
    assert_int_equal(vd_config_set(&cfg, "redis.key_prefix=123456789012345678901234567890123",
                                   err, sizeof(err)), -1);
    assert_int_equal(vd_config_set(&cfg, "redis.key_prefix=1234567890123456789012345678901:",
                                   err, sizeof(err)), 0);
    /* A prefix must end with ':', or one deployment's keys could reach another's. */
    assert_int_equal(vd_config_set(&cfg, "redis.key_prefix=vd", err, sizeof(err)), -1);
    assert_contains(err, "must end with ':'");
    assert_int_equal(vd_config_set(&cfg, "redis.key_prefix={hohhot}:vd:", err, sizeof(err)), 0);
    /* A failed --set leaves the old value. */
    assert_int_equal(cfg.radius_max_m, 7000);
    assert_int_equal(cfg.log_format, VD_LOG_FORMAT_TEXT);
    vd_config_free(&cfg);
}

static void test_int_parsing(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    static const char *const good[] = {"matching.offer_timeout_ms=86400000",
                                       "matching.offer_timeout_ms=0", "redis.port=+80",
                                       "redis.port=0080"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (vd_config_set(&cfg, good[i], err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(cfg.redis_port, 80); /* decimal, not octal */
    static const char *const bad[] = {"redis.port=", "redis.port=1e3", "redis.port=1.0",
                                      "redis.port=0x50", "redis.port=-", "redis.port=8 0",
                                      "redis.port=99999999999999999999", "redis.port=65536",
                                      "redis.port=0", "matching.offer_timeout_ms=86400001",
                                      "redis.port=-9223372036854775809"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (vd_config_set(&cfg, bad[i], err, sizeof(err)) == 0) fail_msg("accepted %s", bad[i]);
        char key[64];
        snprintf(key, sizeof(key), "%.*s:", (int)strcspn(bad[i], "="), bad[i]);
        assert_contains(err, key); /* "... redis.port: <reason>" */
    }
    assert_int_equal(cfg.redis_port, 80);
    vd_config_free(&cfg);
}

/* ---- validate ----------------------------------------------------------------------------- */

static void replace(char **field, const char *value) {
    free(*field);
    *field = strdup(value);
    assert_non_null(*field);
}

static void test_validate(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";

    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_set(&cfg, "matching.radius_start_m=6000", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "matching.radius_start_m (6000)");
    assert_contains(err, "matching.radius_max_m (5000)");
    assert_int_equal(vd_config_set(&cfg, "matching.radius_max_m=6000", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), 0); /* equal is fine */
    vd_config_free(&cfg);

    /* An input topic shared with an output. */
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_set(&cfg, "kafka.topic.assignments=vd.requests", err, sizeof(err)),
                     0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "kafka.topic.requests");
    assert_contains(err, "kafka.topic.assignments");
    vd_config_free(&cfg);

    /* Two inputs sharing a topic. */
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_set(&cfg, "kafka.topic.responses=vd.volunteers", err, sizeof(err)),
                     0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "kafka.topic.volunteers and kafka.topic.responses");
    vd_config_free(&cfg);

    /* Outputs may share a topic. */
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_set(&cfg, "kafka.topic.notifications=vd.assignments", err,
                                   sizeof(err)), 0);
    if (vd_config_validate(&cfg, err, sizeof(err)) != 0) fail_msg("%s", err);
    vd_config_free(&cfg);

    /* http.listen, checked again when a field was changed directly. */
    static const char *const bad_listen[] = {"localhost", "host:", ":9464", "host:0",
                                             "host:65536", "host:abc", "::1:80", "[::1]80",
                                             "host:+80"};
    for (size_t i = 0; i < sizeof(bad_listen) / sizeof(bad_listen[0]); i++) {
        assert_int_equal(vd_config_init(&cfg), 0);
        replace(&cfg.http_listen, bad_listen[i]);
        if (vd_config_validate(&cfg, err, sizeof(err)) == 0)
            fail_msg("http.listen '%s' accepted", bad_listen[i]);
        assert_contains(err, "http.listen");
        vd_config_free(&cfg);
    }
    static const char *const good_listen[] = {"", "0.0.0.0:1", "localhost:65535", "[::]:9464"};
    for (size_t i = 0; i < sizeof(good_listen) / sizeof(good_listen[0]); i++) {
        assert_int_equal(vd_config_init(&cfg), 0);
        replace(&cfg.http_listen, good_listen[i]);
        if (vd_config_validate(&cfg, err, sizeof(err)) != 0) fail_msg("%s", err);
        vd_config_free(&cfg);
    }

    /* Redis needs a host or a socket. */
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_int_equal(vd_config_set(&cfg, "redis.host=", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "redis.host");
    assert_contains(err, "redis.unix_socket");
    assert_int_equal(vd_config_set(&cfg, "redis.unix_socket=/run/redis.sock", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), 0);
    /* An ACL user needs a password. */
    assert_int_equal(vd_config_set(&cfg, "redis.user=vd", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "redis.user");
    assert_contains(err, "redis.password");
    assert_int_equal(vd_config_set(&cfg, "redis.password=pw", err, sizeof(err)), 0);
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), 0);
    vd_config_free(&cfg);

    /* Bounds apply to fields changed directly, too. */
    assert_int_equal(vd_config_init(&cfg), 0);
    cfg.candidates = 0;
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "matching.candidates: 0 is out of range (1..100)");
    cfg.candidates = 8;
    cfg.log_level = 7;
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "log.level");
    cfg.log_level = VD_LOG_ERROR;
    replace(&cfg.topic_deadletter, "");
    assert_int_equal(vd_config_validate(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "kafka.topic.deadletter");
    vd_config_free(&cfg);
}

/* ---- dump --------------------------------------------------------------------------------- */

static void test_dump_round_trip(void **state) {
    (void)state;
    struct vd_config a, b;
    char err[512] = "";
    assert_int_equal(vd_config_init(&a), 0);
    assert_int_equal(vd_config_load_file(&a, CONF_DIR "good.conf", err, sizeof(err)), 0);
    assert_int_equal(vd_config_set(&a, "log.file=", err, sizeof(err)), 0);
    assert_int_equal(vd_config_set(&a, "kafka.producer.acks=all", err, sizeof(err)), 0);
    char *text = dump_alloc(&a);

    assert_contains(text, "[kafka]\n");
    assert_contains(text, "\n[daemon]\n");
    assert_contains(text, "\nbrokers = k1:9092,k2:9092\n");
    assert_contains(text, "\npassword = ***\n");
    assert_contains(text, "\nconsumer.sasl.password = ***\n");
    assert_contains(text, "\nconsumer.security.protocol = SSL\n");
    assert_contains(text, "\nproducer.acks = all\n");
    assert_contains(text, "\nlevel = debug\n");
    assert_contains(text, "\nformat = text\n");
    assert_contains(text, "\nfile =\n");
    assert_null(strstr(text, "pw;with"));
    assert_null(strstr(text, "s3cret"));

    /* A short buffer gets a truncated, terminated prefix and the full length back. */
    char small[16];
    assert_int_equal(vd_config_dump(&a, small, sizeof(small)), (int)strlen(text));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_memory_equal(small, text, sizeof(small) - 1);

    char path[] = "/tmp/vd_config_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);

    assert_int_equal(vd_config_init(&b), 0);
    int rc = vd_config_load_file(&b, path, err, sizeof(err));
    unlink(path);
    if (rc != 0) fail_msg("%s", err);
    char *text2 = dump_alloc(&b);
    assert_string_equal(text, text2);
    /* Spot checks on the fields themselves; secrets come back as the mask. */
    assert_string_equal(b.redis_password, "***");
    assert_string_equal(b.redis_key_prefix, a.redis_key_prefix);
    assert_string_equal(b.http_listen, a.http_listen);
    assert_int_equal(b.radius_max_m, a.radius_max_m);
    assert_int_equal(b.log_level, a.log_level);
    assert_int_equal(b.log_format, a.log_format);
    assert_int_equal(b.consumer_props.n, a.consumer_props.n);
    assert_int_equal(b.producer_props.n, a.producer_props.n);
    assert_string_equal(find_prop(&b.producer_props, "acks")->value, "all");
    free(text);
    free(text2);
    vd_config_free(&a);
    vd_config_free(&b);
}

/* ---- the shipped example ------------------------------------------------------------------ */

/* Is there a line in file that is exactly `want`, optionally followed by an inline comment? */
static int has_line(const char *file, const char *want, size_t wantlen) {
    for (const char *p = file; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len >= wantlen && memcmp(p, want, wantlen) == 0) {
            const char *rest = p + wantlen;
            while (rest < p + len && *rest == ' ') rest++;
            if (rest == p + len || *rest == ';') return 1;
        }
        p = nl ? nl + 1 : p + len;
    }
    return 0;
}

static void test_example_config(void **state) {
    (void)state;
    struct vd_config defaults, example;
    char err[512] = "";
    assert_int_equal(vd_config_init(&defaults), 0);
    assert_int_equal(vd_config_init(&example), 0);
    if (vd_config_load_file(&example, EXAMPLE_CONF, err, sizeof(err)) != 0) fail_msg("%s", err);
    if (vd_config_validate(&example, err, sizeof(err)) != 0) fail_msg("%s", err);

    /* It documents the defaults: loading it changes nothing. */
    char *d = dump_alloc(&defaults), *e = dump_alloc(&example);
    assert_string_equal(d, e);

    /* And it lists every key: each "key = value" line of the dump is in the file. */
    FILE *fp = fopen(EXAMPLE_CONF, "r");
    assert_non_null(fp);
    char *file = calloc(1, 65536);
    assert_non_null(file);
    size_t n = fread(file, 1, 65535, fp);
    assert_true(n > 0 && n < 65535);
    fclose(fp);
    int keys = 0;
    for (const char *p = d; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        size_t len = (size_t)(nl - p);
        if (len > 0 && *p != '[') {
            if (!has_line(file, p, len)) fail_msg("example config lacks \"%.*s\"", (int)len, p);
            keys++;
        }
        p = nl + 1;
    }
    assert_true(keys >= 31);
    free(file);
    free(d);
    free(e);
    vd_config_free(&defaults);
    vd_config_free(&example);
}

/* ---- memory ------------------------------------------------------------------------------- */

/* Loading and setting the same keys repeatedly must not leak (run under LeakSanitizer). */
static void test_reload_no_leak(void **state) {
    (void)state;
    struct vd_config cfg;
    char err[512] = "";
    assert_int_equal(vd_config_init(&cfg), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "good.conf", err, sizeof(err)), 0);
        assert_int_equal(vd_config_set(&cfg, "kafka.brokers=x:1", err, sizeof(err)), 0);
        assert_int_equal(vd_config_set(&cfg, "kafka.consumer.security.protocol=SSL", err,
                                       sizeof(err)), 0);
        assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "bad_int.conf", err, sizeof(err)), -1);
        assert_int_equal(vd_config_load_file(&cfg, CONF_DIR "bad_syntax_first.conf", err,
                                             sizeof(err)), -1);
    }
    assert_int_equal(cfg.consumer_props.n, 2);
    vd_config_free(&cfg);
    /* Reuse after free. */
    assert_int_equal(vd_config_init(&cfg), 0);
    assert_string_equal(cfg.kafka_brokers, "127.0.0.1:9092");
    vd_config_free(&cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_passthrough_props),
        cmocka_unit_test(test_bom_crlf),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_error_text),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_int_parsing),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_reload_no_leak),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
