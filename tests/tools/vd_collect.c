/* vd-collect: what a benchmark's consumers see, with when they saw it.
 *
 * Reads the given topics from the beginning (a fresh consumer group) and prints one line per
 * message: topic, key, the message's timestamp (ms, as its producer set it) and the time it
 * arrived here (ms since the epoch), and the CloudEvents "type" found in the value, tab
 * separated. A request's end-to-end latency is the arrival of its outcome minus the
 * timestamp of the request itself (read from the input topic by the same collector). Runs
 * until SIGINT or SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <librdkafka/rdkafka.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v) {
    char err[512];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
    fprintf(stderr, "vd-collect: %s=%s: %s\n", k, v, err);
    return -1;
}

/* The value's "type" (up to 63 bytes), or "-". */
static void type_of(const rd_kafka_message_t *m, char *out, size_t cap) {
    snprintf(out, cap, "-");
    const char *p = m->payload, *end = p ? p + m->len : NULL;
    if (!p) return;
    static const char tag[] = "\"type\"";
    for (const char *s = p; s + sizeof tag < end; s++) {
        if (memcmp(s, tag, sizeof tag - 1) != 0) continue;
        s += sizeof tag - 1;
        while (s < end && (*s == ' ' || *s == ':')) s++;
        if (s >= end || *s != '"') return;
        s++;
        const char *q = memchr(s, '"', (size_t)(end - s));
        if (!q) return;
        snprintf(out, cap, "%.*s", (int)(q - s), s);
        return;
    }
}

int main(int argc, char **argv) {
    if (argc != 5 || strcmp(argv[1], "-b") || strcmp(argv[3], "-t")) {
        fprintf(stderr, "usage: vd-collect -b BOOTSTRAP -t TOPIC[,TOPIC...]\n"
                        "Prints topic, key, timestamp_ms, arrived_ms, type per message until SIGTERM.\n");
        return 2;
    }
    char err[512], group[64];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    snprintf(group, sizeof group, "vd-collect-%ld-%ld", (long)tv.tv_sec, (long)tv.tv_usec);
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    if (set(cc, "bootstrap.servers", argv[2]) || set(cc, "group.id", group) ||
        set(cc, "auto.offset.reset", "earliest") || set(cc, "enable.auto.commit", "false") ||
        set(cc, "fetch.wait.max.ms", "5") || set(cc, "log_level", "3"))
        return 2;
    rd_kafka_t *cons = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!cons) {
        fprintf(stderr, "vd-collect: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(cons);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(4);
    for (char *t = strtok(argv[4], ","); t; t = strtok(NULL, ","))
        rd_kafka_topic_partition_list_add(sub, t, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(cons, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        fprintf(stderr, "vd-collect: subscribe: %s\n", rd_kafka_err2str(e));
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    while (!stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
        if (!m) {
            fflush(stdout);
            continue;
        }
        if (!m->err) {
            gettimeofday(&tv, NULL);
            long long arrived = (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
            char type[64];
            type_of(m, type, sizeof type);
            printf("%s\t%.*s\t%lld\t%lld\t%s\n", rd_kafka_topic_name(m->rkt),
                   (int)(m->key_len < 200 ? m->key_len : 200), m->key ? (const char *)m->key : "",
                   (long long)rd_kafka_message_timestamp(m, NULL), arrived, type);
        }
        rd_kafka_message_destroy(m);
    }
    fflush(stdout);
    rd_kafka_consumer_close(cons);
    rd_kafka_destroy(cons);
    return 0;
}
