/* vd-echo: the Kafka path alone, for the benchmark: a worker that does no matching.
 *
 * It consumes one input topic in a consumer group and, for every message, produces as many
 * outputs as a match makes (-n, default 3) with the input's key, on the output topics in turn:
 * the first an outcome ("vd.assignment.confirmed"), the others notices, each padded to -s
 * bytes like a real output. Its producer is configured as the daemon's (idempotent, acks=all,
 * linger.ms=5), so the throughput and latency a benchmark measures through it are what Kafka
 * and the client library allow a dispatcher on this machine. Runs until SIGINT or SIGTERM,
 * then flushes and prints `echoed N inputs, M outputs`. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#define MAX_OUT_TOPICS 8

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: vd-echo -b BOOTSTRAP -g GROUP -i IN_TOPIC -o OUT_TOPIC[,OUT_TOPIC...]\n"
            "               [-n OUTPUTS] [-s BYTES]\n"
            "Consumes IN_TOPIC and produces OUTPUTS messages per input (default 3), keyed as\n"
            "the input, on the output topics in turn, each about BYTES long (default 800).\n"
            "Stops on SIGINT/SIGTERM; prints `echoed N inputs, M outputs`.\n");
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v) {
    char err[512];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
    fprintf(stderr, "vd-echo: %s=%s: %s\n", k, v, err);
    return -1;
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *group = NULL, *in = NULL;
    char *outs = NULL;
    int nout_per_in = 3, size = 800;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) break;
        if (!strcmp(a, "-b")) brokers = v;
        else if (!strcmp(a, "-g")) group = v;
        else if (!strcmp(a, "-i")) in = v;
        else if (!strcmp(a, "-o")) outs = argv[i + 1];
        else if (!strcmp(a, "-n")) nout_per_in = atoi(v);
        else if (!strcmp(a, "-s")) size = atoi(v);
        else break;
        i++;
    }
    if (!brokers || !group || !in || !outs || nout_per_in < 1 || nout_per_in > 100 || size < 64 ||
        size > 100000) {
        usage(stderr);
        return 2;
    }
    const char *topics[MAX_OUT_TOPICS];
    int ntopics = 0;
    for (char *t = strtok(outs, ","); t && ntopics < MAX_OUT_TOPICS; t = strtok(NULL, ","))
        topics[ntopics++] = t;
    if (!ntopics) {
        usage(stderr);
        return 2;
    }

    char err[512];
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    if (set(pc, "bootstrap.servers", brokers) || set(pc, "enable.idempotence", "true") ||
        set(pc, "acks", "all") || set(pc, "linger.ms", "5") || set(pc, "log_level", "3"))
        return 2;
    rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!prod) {
        fprintf(stderr, "vd-echo: producer: %s\n", err);
        return 1;
    }
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    if (set(cc, "bootstrap.servers", brokers) || set(cc, "group.id", group) ||
        set(cc, "auto.offset.reset", "earliest") || set(cc, "fetch.wait.max.ms", "10") ||
        set(cc, "log_level", "3"))
        return 2;
    rd_kafka_t *cons = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!cons) {
        fprintf(stderr, "vd-echo: consumer: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(cons);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, in, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(cons, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        fprintf(stderr, "vd-echo: subscribe %s: %s\n", in, rd_kafka_err2str(e));
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    char *value = malloc((size_t)size + 256);
    if (!value) return 1;
    uint64_t inputs = 0, outputs = 0;
    while (!stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
        rd_kafka_poll(prod, 0);
        if (!m) continue;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "vd-echo: consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        inputs++;
        for (int k = 0; k < nout_per_in; k++) {
            int n = snprintf(value, (size_t)size + 256,
                             "{\"type\":\"%s\",\"data\":{\"request_id\":\"%.*s\"},\"pad\":\"",
                             k == 0 ? "vd.assignment.confirmed" : "vd.notify.volunteer",
                             (int)(m->key_len < 128 ? m->key_len : 128), (const char *)m->key);
            while (n < size - 2) value[n++] = 'x';
            value[n++] = '"';
            value[n++] = '}';
            for (;;) {
                e = rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topics[k % ntopics]),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_KEY(m->key, m->key_len),
                                      RD_KAFKA_V_VALUE(value, (size_t)n), RD_KAFKA_V_END);
                if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
                rd_kafka_poll(prod, 50);
            }
            if (e) fprintf(stderr, "vd-echo: produce: %s\n", rd_kafka_err2str(e));
            else outputs++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(cons);
    rd_kafka_destroy(cons);
    rd_kafka_flush(prod, 10000);
    rd_kafka_destroy(prod);
    free(value);
    printf("echoed %" PRIu64 " inputs, %" PRIu64 " outputs\n", inputs, outputs);
    return 0;
}
