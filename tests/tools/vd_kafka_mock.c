/* vd-kafka-mock: an embedded Kafka cluster (librdkafka's mock brokers) for tests and the demo.
 *
 * The mock cluster is a set of real Kafka-protocol listeners on loopback, served by a thread
 * that librdkafka starts inside rd_kafka_mock_cluster_new(). It hangs off an rd_kafka_t that
 * must outlive it; that handle is never polled (the mock thread needs nothing from it). Other
 * processes (kcat, vd-produce, the daemon) connect to the printed bootstrap list.
 * A command must never block for long, or `up` could not undo a `down`: only `topics` talks
 * to the brokers (a metadata request bounded by a timeout). Watermark queries are left out on
 * purpose, as librdkafka 2.0.2 waits without bound for a partition whose leader is down.
 *
 * Protocol on stdout: the first line is `bootstrap=<host:port,...>`, then `ready` once every
 * --topic exists. After that each command line read on stdin gets exactly one reply line,
 * `ok[ detail]` or `error: <reason>`, flushed at once, so a test can drive faults step by step.
 * stdin EOF (the test that started us died), `quit`, SIGTERM and SIGINT all end the process
 * with status 0. With --no-stdin commands are not read and only a signal ends it (demo use).
 *
 * Limits of the mock worth knowing: no TLS/SASL, no CreateTopics API (topics are made here or
 * auto-created with the mock's default partition count when a producer asks for them), and
 * each partition keeps at most about 100,000 message sets / 5 MiB: older ones are dropped from
 * the log start (so eight 1 MiB messages leave the last four). A consumer group whose last
 * member left waits that member's session.timeout.ms before the next member's join completes;
 * a first join takes about 3 s. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define LINE_MAX_LEN 4096
#define MAX_TOPICS 64
#define MAX_ERRORS 10000
#define QUERY_TIMEOUT_MS 5000

struct topic_spec {
    const char *name; /* points into argv */
    int partitions;
    int replication;
};

struct mock_state {
    rd_kafka_t *rk;                 /* owner of the mock cluster; kept alive until the end */
    rd_kafka_mock_cluster_t *mcluster;
    rd_kafka_t *query_rk;           /* lazily created client for `topics` */
    int broker_cnt;
    char linebuf[LINE_MAX_LEN];
    size_t linelen;
    int discarding;                 /* the current input line was too long; skip to newline */
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) {
    stop_signal = sig;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: vd-kafka-mock [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...\n"
            "                     [--debug CONTEXTS] [--no-stdin]\n"
            "\n"
            "Runs librdkafka's mock Kafka cluster on loopback for tests and demos.\n"
            "\n"
            "Options:\n"
            "  --brokers N        number of brokers, ids 1..N (default 3)\n"
            "  --topic SPEC       create topic NAME with PARTITIONS partitions and\n"
            "                     REPLICATION replicas (default min(3, brokers)); repeatable.\n"
            "                     (librdkafka 2.0.2's mock lists every broker as a replica.)\n"
            "  --debug CONTEXTS   librdkafka debug contexts for the mock, e.g. mock,protocol\n"
            "  --no-stdin         do not read commands; run until SIGTERM/SIGINT\n"
            "  -h, --help         show this help\n"
            "\n"
            "Output: first line `bootstrap=HOST:PORT,...`, then `ready` once topics exist.\n"
            "\n"
            "Commands on stdin, one per line, each answered by `ok[ ...]` or `error: ...`:\n"
            "  down BROKER_ID                  disconnect a broker, refuse new connections\n"
            "  up BROKER_ID                    accept connections again\n"
            "  rtt BROKER_ID MS                delay the broker's responses by MS\n"
            "  leader TOPIC PARTITION BROKER_ID   move a partition leader (-1 = none)\n"
            "  coordinator group|transaction KEY BROKER_ID   pin a group/txn coordinator\n"
            "  error APIKEY ERRCODE COUNT      next COUNT requests of APIKEY fail with ERRCODE\n"
            "  broker-error BROKER_ID APIKEY ERRCODE COUNT [RTT_MS]   same, one broker\n"
            "  clear-errors APIKEY             drop pending cluster-level errors of APIKEY\n"
            "  topics                          ok NAME:PARTITIONS ... (metadata, at most 5 s)\n"
            "  quit                            reply ok and exit 0\n"
            "BROKER_ID may be -1 or `all` for down/up/rtt. APIKEY is a number or a name\n"
            "(Produce, Fetch, Metadata, OffsetCommit, OffsetFetch, FindCoordinator, JoinGroup,\n"
            "Heartbeat, LeaveGroup, SyncGroup, InitProducerId, ...). ERRCODE is a number or\n"
            "an error name as librdkafka prints it (NOT_LEADER_FOR_PARTITION, _TRANSPORT, ...).\n"
            "Exit status: 0 on quit, stdin EOF, SIGTERM or SIGINT; 1 on failure; 2 on bad usage.\n");
}

/* Writes one reply line to stdout and flushes it. A vanished reader is not an error here. */
static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

/* Parses a whole decimal integer in [min, max]. Returns 0 or -1. */
static int parse_long(const char *s, long min, long max, long *out) {
    char *end;
    long v;

    if (s == NULL || *s == '\0') return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max) return -1;
    *out = v;
    return 0;
}

/* Parses a broker id; `all` and -1 mean every broker. Returns 0 or -1. */
static int parse_broker(const char *s, int allow_all, int32_t *out) {
    long v;

    if (allow_all && s != NULL && strcmp(s, "all") == 0) {
        *out = -1;
        return 0;
    }
    if (parse_long(s, allow_all ? -1 : 0, INT32_MAX, &v) != 0) return -1;
    *out = (int32_t)v;
    return 0;
}

static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},          {"Fetch", 1},          {"ListOffsets", 2},
    {"Offset", 2},           {"Metadata", 3},       {"OffsetCommit", 8},
    {"OffsetFetch", 9},      {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},       {"LeaveGroup", 13},    {"SyncGroup", 14},
    {"DescribeGroups", 15},  {"ListGroups", 16},    {"SaslHandshake", 17},
    {"ApiVersion", 18},      {"ApiVersions", 18},   {"CreateTopics", 19},
    {"DeleteTopics", 20},    {"DeleteRecords", 21}, {"InitProducerId", 22},
    {"OffsetForLeaderEpoch", 23}, {"AddPartitionsToTxn", 24}, {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},          {"TxnOffsetCommit", 28},
};

/* Parses a Kafka protocol ApiKey given as a number or a name. Returns 0 or -1. */
static int parse_api_key(const char *s, int16_t *out) {
    long v;

    if (s == NULL) return -1;
    for (size_t i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++) {
        if (strcasecmp(s, api_keys[i].name) == 0) {
            *out = api_keys[i].key;
            return 0;
        }
    }
    if (parse_long(s, 0, 1000, &v) != 0) return -1;
    *out = (int16_t)v;
    return 0;
}

/* Parses an error code given as a number or its librdkafka name (with or without the
 * RD_KAFKA_RESP_ERR_ prefix). Returns 0 or -1. */
static int parse_err(const char *s, rd_kafka_resp_err_t *out) {
    const struct rd_kafka_err_desc *descs;
    size_t cnt;
    long v;

    if (s == NULL) return -1;
    if (parse_long(s, INT_MIN, INT_MAX, &v) == 0) {
        *out = (rd_kafka_resp_err_t)v;
        return 0;
    }
    if (strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0) s += 18;
    rd_kafka_get_err_descs(&descs, &cnt);
    for (size_t i = 0; i < cnt; i++) {
        if (descs[i].name != NULL && strcasecmp(descs[i].name, s) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

/* Parses NAME:PARTITIONS[:REPLICATION]; NAME keeps pointing into arg (which is modified).
 * Returns 0 or -1. */
static int parse_topic_spec(char *arg, int broker_cnt, struct topic_spec *spec) {
    char *colon = strchr(arg, ':');
    char *colon2;
    long v;

    if (colon == NULL || colon == arg) return -1;
    *colon = '\0';
    colon2 = strchr(colon + 1, ':');
    if (colon2 != NULL) *colon2 = '\0';
    if (parse_long(colon + 1, 1, 100000, &v) != 0) return -1;
    spec->name = arg;
    spec->partitions = (int)v;
    spec->replication = broker_cnt < 3 ? broker_cnt : 3;
    if (colon2 != NULL) {
        if (parse_long(colon2 + 1, 1, broker_cnt, &v) != 0) return -1;
        spec->replication = (int)v;
    }
    return 0;
}

/* Creates the plain client used to ask the mock brokers for metadata.
 * Returns 0 or -1 with a reason in err. */
static int query_client_ensure(struct mock_state *st, char *err, size_t errlen) {
    rd_kafka_conf_t *conf;

    if (st->query_rk != NULL) return 0;
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(st->mcluster), err,
                          errlen) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "2", err, errlen) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    st->query_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
    if (st->query_rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    return 0; /* conf is owned by query_rk now */
}

static void cmd_topics(struct mock_state *st) {
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t rerr;
    char err[512];
    char out[LINE_MAX_LEN];
    size_t used = 0;

    if (query_client_ensure(st, err, sizeof(err)) != 0) {
        reply("error: %s", err);
        return;
    }
    rerr = rd_kafka_metadata(st->query_rk, 1, NULL, &md, QUERY_TIMEOUT_MS);
    if (rerr) {
        reply("error: metadata: %s", rd_kafka_err2str(rerr));
        return;
    }
    out[0] = '\0';
    for (int i = 0; i < md->topic_cnt; i++) {
        int n = snprintf(out + used, sizeof(out) - used, " %s:%d", md->topics[i].topic,
                         md->topics[i].partition_cnt);
        if (n < 0 || (size_t)n >= sizeof(out) - used) break;
        used += (size_t)n;
    }
    rd_kafka_metadata_destroy(md);
    reply("ok%s", out);
}

/* Pushes COUNT copies of one error onto the cluster-level error stack of an ApiKey. */
static void cmd_error(struct mock_state *st, char **argv, int argc) {
    rd_kafka_resp_err_t code;
    rd_kafka_resp_err_t *errs;
    int16_t api_key;
    long cnt;

    if (argc != 4 || parse_api_key(argv[1], &api_key) != 0 || parse_err(argv[2], &code) != 0 ||
        parse_long(argv[3], 1, MAX_ERRORS, &cnt) != 0) {
        reply("error: usage: error APIKEY ERRCODE COUNT (COUNT 1..%d)", MAX_ERRORS);
        return;
    }
    errs = calloc((size_t)cnt, sizeof(*errs));
    if (errs == NULL) {
        reply("error: out of memory");
        return;
    }
    for (long i = 0; i < cnt; i++) errs[i] = code;
    rd_kafka_mock_push_request_errors_array(st->mcluster, api_key, (size_t)cnt, errs);
    free(errs);
    reply("ok");
}

/* Pushes COUNT copies of one error (with an optional response delay) onto one broker. */
static void cmd_broker_error(struct mock_state *st, char **argv, int argc) {
    rd_kafka_resp_err_t code, rerr;
    int32_t broker;
    int16_t api_key;
    long cnt, rtt = 0;

    if ((argc != 5 && argc != 6) || parse_broker(argv[1], 0, &broker) != 0 ||
        parse_api_key(argv[2], &api_key) != 0 || parse_err(argv[3], &code) != 0 ||
        parse_long(argv[4], 1, MAX_ERRORS, &cnt) != 0 ||
        (argc == 6 && parse_long(argv[5], 0, 3600000, &rtt) != 0)) {
        reply("error: usage: broker-error BROKER_ID APIKEY ERRCODE COUNT [RTT_MS]");
        return;
    }
    for (long i = 0; i < cnt; i++) {
        rerr = rd_kafka_mock_broker_push_request_error_rtts(st->mcluster, broker, api_key, 1,
                                                            code, (int)rtt);
        if (rerr) {
            reply("error: broker %" PRId32 ": %s", broker, rd_kafka_err2str(rerr));
            return;
        }
    }
    reply("ok");
}

/* Splits a line on blanks in place. Returns the number of words stored in argv. */
static int split_words(char *line, char **argv, int max) {
    int argc = 0;
    char *save = NULL;

    for (char *w = strtok_r(line, " \t\r", &save); w != NULL && argc < max;
         w = strtok_r(NULL, " \t\r", &save))
        argv[argc++] = w;
    return argc;
}

/* Runs one command line and writes its reply. Returns 1 when the process should exit. */
static int run_command(struct mock_state *st, char *line) {
    char *argv[8];
    int argc = split_words(line, argv, 8);
    rd_kafka_resp_err_t rerr;
    int32_t broker;
    long v;

    if (argc == 0) return 0; /* blank lines get no reply */

    if (strcmp(argv[0], "quit") == 0 || strcmp(argv[0], "exit") == 0) {
        reply("ok");
        return 1;
    } else if (strcmp(argv[0], "down") == 0 || strcmp(argv[0], "up") == 0) {
        if (argc != 2 || parse_broker(argv[1], 1, &broker) != 0) {
            reply("error: usage: %s BROKER_ID", argv[0]);
            return 0;
        }
        if (broker > st->broker_cnt) {
            reply("error: no broker %" PRId32 " (brokers are 1..%d)", broker, st->broker_cnt);
            return 0;
        }
        rerr = argv[0][0] == 'd' ? rd_kafka_mock_broker_set_down(st->mcluster, broker)
                                 : rd_kafka_mock_broker_set_up(st->mcluster, broker);
    } else if (strcmp(argv[0], "rtt") == 0) {
        if (argc != 3 || parse_broker(argv[1], 1, &broker) != 0 ||
            parse_long(argv[2], 0, 3600000, &v) != 0) {
            reply("error: usage: rtt BROKER_ID MS");
            return 0;
        }
        if (broker > st->broker_cnt) {
            reply("error: no broker %" PRId32 " (brokers are 1..%d)", broker, st->broker_cnt);
            return 0;
        }
        rerr = rd_kafka_mock_broker_set_rtt(st->mcluster, broker, (int)v);
    } else if (strcmp(argv[0], "leader") == 0) {
        if (argc != 4 || parse_long(argv[2], 0, INT32_MAX, &v) != 0 ||
            parse_broker(argv[3], 1, &broker) != 0) {
            reply("error: usage: leader TOPIC PARTITION BROKER_ID");
            return 0;
        }
        if (broker > st->broker_cnt) {
            reply("error: no broker %" PRId32 " (brokers are 1..%d)", broker, st->broker_cnt);
            return 0;
        }
        rerr = rd_kafka_mock_partition_set_leader(st->mcluster, argv[1], (int32_t)v, broker);
    } else if (strcmp(argv[0], "coordinator") == 0) {
        if (argc != 4 ||
            (strcmp(argv[1], "group") != 0 && strcmp(argv[1], "transaction") != 0) ||
            parse_broker(argv[3], 0, &broker) != 0) {
            reply("error: usage: coordinator group|transaction KEY BROKER_ID");
            return 0;
        }
        rerr = rd_kafka_mock_coordinator_set(st->mcluster, argv[1], argv[2], broker);
    } else if (strcmp(argv[0], "error") == 0) {
        cmd_error(st, argv, argc);
        return 0;
    } else if (strcmp(argv[0], "broker-error") == 0) {
        cmd_broker_error(st, argv, argc);
        return 0;
    } else if (strcmp(argv[0], "clear-errors") == 0) {
        int16_t api_key;

        if (argc != 2 || parse_api_key(argv[1], &api_key) != 0) {
            reply("error: usage: clear-errors APIKEY");
            return 0;
        }
        rd_kafka_mock_clear_request_errors(st->mcluster, api_key);
        rerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    } else if (strcmp(argv[0], "topics") == 0) {
        cmd_topics(st);
        return 0;
    } else {
        reply("error: unknown command '%s' (see --help)", argv[0]);
        return 0;
    }

    if (rerr)
        reply("error: %s", rd_kafka_err2str(rerr));
    else
        reply("ok");
    return 0;
}

/* Reads what stdin has and runs each complete line. Returns 1 on EOF or quit, else 0. */
static int read_commands(struct mock_state *st) {
    char buf[LINE_MAX_LEN];
    ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));

    if (n < 0) return (errno == EINTR || errno == EAGAIN) ? 0 : 1;
    if (n == 0) return 1;

    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];

        if (c == '\n') {
            if (st->discarding) {
                reply("error: line longer than %d bytes", LINE_MAX_LEN - 1);
            } else {
                st->linebuf[st->linelen] = '\0';
                if (run_command(st, st->linebuf)) return 1;
            }
            st->linelen = 0;
            st->discarding = 0;
        } else if (!st->discarding) {
            if (st->linelen + 1 >= sizeof(st->linebuf))
                st->discarding = 1;
            else
                st->linebuf[st->linelen++] = c;
        }
    }
    return 0;
}

/* Creates the rd_kafka_t that owns the cluster, then the cluster. Returns 0 or -1. */
static int cluster_start(struct mock_state *st, const char *debug) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];

    /* The owner handle has no bootstrap servers and is never used as a client; keep it
     * quiet unless the mock's debug output was asked for. */
    if (rd_kafka_conf_set(conf, "log_level", debug != NULL ? "7" : "4", err, sizeof(err)) !=
            RD_KAFKA_CONF_OK ||
        (debug != NULL &&
         rd_kafka_conf_set(conf, "debug", debug, err, sizeof(err)) != RD_KAFKA_CONF_OK) ||
        rd_kafka_conf_set(conf, "client.id", "vd-kafka-mock", err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
        fprintf(stderr, "vd-kafka-mock: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    st->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (st->rk == NULL) {
        fprintf(stderr, "vd-kafka-mock: rd_kafka_new: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    conf = NULL; /* owned by st->rk */

    st->mcluster = rd_kafka_mock_cluster_new(st->rk, st->broker_cnt);
    if (st->mcluster == NULL) {
        fprintf(stderr, "vd-kafka-mock: could not create the mock cluster\n");
        return -1;
    }
    return 0;
}

static void cluster_stop(struct mock_state *st) {
    if (st->query_rk != NULL) {
        rd_kafka_destroy(st->query_rk);
        st->query_rk = NULL;
    }
    if (st->mcluster != NULL) {
        rd_kafka_mock_cluster_destroy(st->mcluster);
        st->mcluster = NULL;
    }
    if (st->rk != NULL) {
        rd_kafka_destroy(st->rk);
        st->rk = NULL;
    }
}

int main(int argc, char **argv) {
    static struct mock_state st;
    static struct topic_spec topics[MAX_TOPICS];
    char *topic_args[MAX_TOPICS];
    int topic_cnt = 0;
    const char *debug = NULL;
    int read_stdin = 1;
    int rc = 0;
    struct sigaction sa;

    st.broker_cnt = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        long v;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--no-stdin") == 0) {
            read_stdin = 0;
        } else if (strcmp(a, "--brokers") == 0 && val != NULL) {
            if (parse_long(val, 1, 64, &v) != 0) {
                fprintf(stderr, "vd-kafka-mock: --brokers wants 1..64, not '%s'\n", val);
                return 2;
            }
            st.broker_cnt = (int)v;
            i++;
        } else if (strcmp(a, "--topic") == 0 && val != NULL) {
            if (topic_cnt == MAX_TOPICS) {
                fprintf(stderr, "vd-kafka-mock: at most %d --topic options\n", MAX_TOPICS);
                return 2;
            }
            topic_args[topic_cnt++] = argv[++i];
        } else if (strcmp(a, "--debug") == 0 && val != NULL) {
            debug = val;
            i++;
        } else {
            fprintf(stderr, "vd-kafka-mock: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    /* Topic specs are checked after all options, since REPLICATION depends on --brokers. */
    for (int i = 0; i < topic_cnt; i++) {
        char *spec = topic_args[i];
        char shown[256];

        snprintf(shown, sizeof(shown), "%s", spec);
        if (parse_topic_spec(spec, st.broker_cnt, &topics[i]) != 0) {
            fprintf(stderr,
                    "vd-kafka-mock: bad --topic '%s': want NAME:PARTITIONS[:REPLICATION] "
                    "with 1 <= REPLICATION <= brokers (%d)\n",
                    shown, st.broker_cnt);
            return 2;
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cluster_start(&st, debug) != 0) {
        cluster_stop(&st);
        return 1;
    }
    printf("bootstrap=%s\n", rd_kafka_mock_cluster_bootstraps(st.mcluster));
    fflush(stdout);

    for (int i = 0; i < topic_cnt; i++) {
        rd_kafka_resp_err_t rerr = rd_kafka_mock_topic_create(
            st.mcluster, topics[i].name, topics[i].partitions, topics[i].replication);
        if (rerr) {
            fprintf(stderr, "vd-kafka-mock: creating topic %s: %s\n", topics[i].name,
                    rd_kafka_err2str(rerr));
            cluster_stop(&st);
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);

    while (!stop_signal) {
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = poll(&pfd, read_stdin ? 1 : 0, 1000);

        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "vd-kafka-mock: poll: %s\n", strerror(errno));
            rc = 1;
            break;
        }
        if (n > 0 && read_commands(&st)) break;
    }

    cluster_stop(&st);
    return rc;
}
