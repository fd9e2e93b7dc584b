/* vd-produce: produces length-framed binary messages read from stdin to one Kafka topic.
 *
 * Tests and the demo need exact bytes on the wire (NULL vs empty keys and values, bad UTF-8,
 * 1 MiB payloads), which kcat's line-oriented input cannot express. Frame format, repeated
 * until EOF:
 *   4-byte big-endian key length (0xFFFFFFFF = NULL key), key bytes,
 *   4-byte big-endian value length (0xFFFFFFFF = NULL value), value bytes.
 * The producer is idempotent with acks=all, so retries neither duplicate nor reorder messages
 * within a partition. QUEUE_FULL is handled by serving delivery reports and retrying, so any
 * count works with bounded memory. At EOF it waits until every message has a delivery report:
 * all delivered prints `produced N` and exits 0; otherwise the first delivery error goes to
 * stderr and the exit status is 1 (2 for bad usage or malformed input). -r RATE paces the
 * messages (RATE per second, each produced at its time: a benchmark's steady load). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define NULL_LEN 0xFFFFFFFFu
#define MAX_FRAME_LEN (64u * 1024u * 1024u)

struct produce_state {
    uint64_t submitted;
    uint64_t delivered;
    uint64_t failed;
    rd_kafka_resp_err_t first_err;
    char first_errstr[512];
    int fatal;
};

static void usage(FILE *out) {
    fprintf(out,
            "usage: vd-produce -b BOOTSTRAP -t TOPIC [-p PARTITION] [-r RATE] [-X PROP=VALUE]...\n"
            "\n"
            "Reads frames from stdin and produces one Kafka message per frame, in order:\n"
            "  u32be key_len (0xFFFFFFFF = NULL key), key bytes,\n"
            "  u32be value_len (0xFFFFFFFF = NULL value), value bytes.\n"
            "Defaults: enable.idempotence=true, acks=all, linger.ms=5,\n"
            "message.max.bytes=4194304, message.timeout.ms=60000 (-X overrides them).\n"
            "-p sends every message to one partition (default: the keyed partitioner).\n"
            "-r produces RATE messages per second, each at its time (default: at once).\n"
            "On success prints `produced N` and exits 0; a delivery error is printed to\n"
            "stderr with exit 1; bad usage or a truncated frame exits 2.\n");
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) {
    struct produce_state *st = opaque;

    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        st->delivered++;
        return;
    }
    if (st->failed++ == 0) {
        st->first_err = msg->err;
        snprintf(st->first_errstr, sizeof(st->first_errstr), "%s", rd_kafka_err2str(msg->err));
    }
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    struct produce_state *st = opaque;
    char fatal_str[512];

    if (err != RD_KAFKA_RESP_ERR__FATAL) {
        /* Transient (broker down, all brokers down): librdkafka retries on its own. */
        fprintf(stderr, "vd-produce: warning: %s: %s\n", rd_kafka_err2name(err), reason);
        return;
    }
    rd_kafka_fatal_error(rk, fatal_str, sizeof(fatal_str));
    fprintf(stderr, "vd-produce: fatal error: %s\n", fatal_str);
    st->fatal = 1;
}

/* Reads exactly len bytes. Returns 1 on success, 0 on a clean EOF before any byte, -1 on a
 * short read or I/O error. */
static int read_exact(FILE *in, void *buf, size_t len) {
    size_t got = fread(buf, 1, len, in);

    if (got == len) return 1;
    if (got == 0 && feof(in)) return 0;
    return -1;
}

/* Reads one length-prefixed field into *buf (grown as needed). *is_null tells a NULL field.
 * Returns 1 on success, 0 on clean EOF (only when eof_ok), -1 on malformed input. */
static int read_field(FILE *in, int eof_ok, char **buf, size_t *cap, uint32_t *len,
                      int *is_null, const char **why) {
    unsigned char hdr[4];
    int r = read_exact(in, hdr, 4);

    if (r == 0 && eof_ok) return 0;
    if (r != 1) {
        *why = "truncated length";
        return -1;
    }
    *len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 |
           (uint32_t)hdr[3];
    *is_null = *len == NULL_LEN;
    if (*is_null) {
        *len = 0;
        return 1;
    }
    if (*len > MAX_FRAME_LEN) {
        *why = "field longer than 64 MiB";
        return -1;
    }
    if (*len + 1 > *cap) {
        size_t ncap = *cap ? *cap : 4096;
        char *nbuf;

        while (ncap < (size_t)*len + 1) ncap *= 2;
        nbuf = realloc(*buf, ncap);
        if (nbuf == NULL) {
            *why = "out of memory";
            return -1;
        }
        *buf = nbuf;
        *cap = ncap;
    }
    if (*len > 0 && read_exact(in, *buf, *len) != 1) {
        *why = "truncated bytes";
        return -1;
    }
    return 1;
}

/* Creates the producer. Returns it, or NULL with the reason printed. */
static rd_kafka_t *producer_new(const char *brokers, char **props, int prop_cnt,
                                struct produce_state *st) {
    static const char *defaults[][2] = {
        {"enable.idempotence", "true"}, {"acks", "all"},
        {"linger.ms", "5"},             {"message.max.bytes", "4194304"},
        {"message.timeout.ms", "60000"}, {"queue.buffering.max.messages", "100000"},
        {"log_level", "2"}, /* errors arrive through on_error */
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    char err[512];

    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)) !=
        RD_KAFKA_CONF_OK)
        goto err;
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK)
            goto err;
    for (int i = 0; i < prop_cnt; i++) {
        char *eq = strchr(props[i], '=');

        if (eq == NULL) {
            snprintf(err, sizeof(err), "-X wants PROP=VALUE, not '%s'", props[i]);
            goto err;
        }
        *eq = '\0';
        if (rd_kafka_conf_set(conf, props[i], eq + 1, err, sizeof(err)) != RD_KAFKA_CONF_OK)
            goto err;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, st);

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == NULL) goto err;
    return rk; /* conf is owned by rk now */

err:
    fprintf(stderr, "vd-produce: %s\n", err);
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Produces one message, serving delivery reports while the local queue is full.
 * Returns 0 or -1 (error printed). */
static int produce_one(rd_kafka_t *rk, const char *topic, int32_t partition, const char *key,
                       size_t key_len, int key_null, const char *val, size_t val_len,
                       int val_null, struct produce_state *st) {
    static const char empty[1] = "";

    /* An empty (not NULL) field needs a non-NULL pointer for librdkafka to keep it
     * distinct from NULL. (The V_ macros do not parenthesize their arguments.) */
    const void *key_ptr = key_null ? NULL : key_len ? (const void *)key : (const void *)empty;
    void *val_ptr = val_null ? NULL : (void *)(val_len ? val : empty);

    for (;;) {
        rd_kafka_resp_err_t err;

        err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_KEY(key_ptr, key_len),
                                RD_KAFKA_V_VALUE(val_ptr, val_len), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            st->submitted++;
            rd_kafka_poll(rk, 0);
            return 0;
        }
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "vd-produce: produce to %s: %s\n", topic, rd_kafka_err2str(err));
            return -1;
        }
        rd_kafka_poll(rk, 100);
        if (st->fatal) return -1;
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Waits until the monotonic time t, serving delivery reports meanwhile. */
static void pace_until(double t, rd_kafka_t *rk) {
    for (;;) {
        double left = t - now_s();
        if (left <= 0) return;
        if (left > 0.002) {
            rd_kafka_poll(rk, 0);
            left = t - now_s();
            if (left <= 0) return;
        }
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    struct produce_state st;
    const char *brokers = NULL, *topic = NULL;
    char **props = NULL;
    int prop_cnt = 0;
    int32_t partition = RD_KAFKA_PARTITION_UA;
    double rate = 0;
    rd_kafka_t *rk = NULL;
    char *key = NULL, *val = NULL;
    size_t key_cap = 0, val_cap = 0;
    int rc = 1;

    memset(&st, 0, sizeof(st));
    props = calloc((size_t)argc, sizeof(*props));
    if (props == NULL) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *val_arg = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            free(props);
            return 0;
        } else if (strcmp(a, "-b") == 0 && val_arg != NULL) {
            brokers = val_arg;
            i++;
        } else if (strcmp(a, "-t") == 0 && val_arg != NULL) {
            topic = val_arg;
            i++;
        } else if (strcmp(a, "-p") == 0 && val_arg != NULL) {
            char *end;
            long p;

            errno = 0;
            p = strtol(val_arg, &end, 10);
            if (errno != 0 || *end != '\0' || p < 0 || p > INT32_MAX) {
                fprintf(stderr, "vd-produce: bad partition '%s'\n", val_arg);
                free(props);
                return 2;
            }
            partition = (int32_t)p;
            i++;
        } else if (strcmp(a, "-r") == 0 && val_arg != NULL) {
            char *end;

            errno = 0;
            rate = strtod(val_arg, &end);
            if (errno != 0 || *end != '\0' || !(rate > 0 && rate <= 1e7)) {
                fprintf(stderr, "vd-produce: bad rate '%s' (messages per second, > 0)\n", val_arg);
                free(props);
                return 2;
            }
            i++;
        } else if (strcmp(a, "-X") == 0 && val_arg != NULL) {
            props[prop_cnt++] = val_arg;
            i++;
        } else {
            fprintf(stderr, "vd-produce: unknown or incomplete option '%s' (see --help)\n", a);
            free(props);
            return 2;
        }
    }
    if (brokers == NULL || topic == NULL) {
        usage(stderr);
        free(props);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    rk = producer_new(brokers, props, prop_cnt, &st);
    free(props);
    props = NULL;
    if (rk == NULL) return 2;

    double t0 = now_s();
    for (;;) {
        uint32_t key_len, val_len;
        int key_null, val_null, r;
        const char *why = NULL;

        r = read_field(stdin, 1, &key, &key_cap, &key_len, &key_null, &why);
        if (r == 0) break;
        if (r > 0) r = read_field(stdin, 0, &val, &val_cap, &val_len, &val_null, &why);
        if (r < 0) {
            fprintf(stderr, "vd-produce: bad input after %" PRIu64 " frames: %s\n",
                    st.submitted, why);
            rc = 2;
            goto out;
        }
        if (rate > 0) pace_until(t0 + (double)st.submitted / rate, rk);
        if (produce_one(rk, topic, partition, key, key_len, key_null, val, val_len, val_null,
                        &st) != 0)
            goto out;
    }

    /* Wait for every delivery report; message.timeout.ms bounds how long this can take. */
    while (rd_kafka_outq_len(rk) > 0 && !st.fatal) rd_kafka_flush(rk, 500);
    rd_kafka_poll(rk, 0);

    if (st.fatal) {
        fprintf(stderr, "vd-produce: stopped by a fatal producer error after %" PRIu64
                        " of %" PRIu64 " delivered\n", st.delivered, st.submitted);
    } else if (st.failed > 0 || st.delivered != st.submitted) {
        fprintf(stderr,
                "vd-produce: delivery failed for %" PRIu64 " of %" PRIu64 " messages: %s (%s)\n",
                st.failed, st.submitted, st.first_errstr, rd_kafka_err2name(st.first_err));
    } else {
        printf("produced %" PRIu64 "\n", st.delivered);
        fflush(stdout);
        rc = 0;
    }

out:
    if (rc != 0) rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_destroy(rk);
    free(key);
    free(val);
    return rc;
}
