/* vd_kafka: librdkafka consumer and producer on the libuv loop (see vd_kafka.h).
 *
 * Design notes for a newcomer:
 * - Never block the loop: no rd_kafka_flush() and no timeouts > 0 on the hot path; only the
 *   shutdown steps (commit, consumer close, final flush) block, and they are bounded.
 * - The consumer's main queue is redirected to its consumer queue (rd_kafka_poll_set_consumer)
 *   so rebalances, errors and messages all arrive through rd_kafka_consumer_poll().
 * - Two idempotent producers share the outputs: the batching one (linger.ms, 5 ms by default)
 *   while outputs flow, the prompt one (linger.ms=0) for an output that comes alone, so a
 *   lone request's outcome leaves at once and a burst's still goes out in batches. vd_lanes
 *   chooses, and never puts one key's outputs in both at once, which keeps their order.
 * - Delivery reports run inside rd_kafka_poll() on the producers, on the loop thread. A failed
 *   delivery is copied into the retry list and produced again from the safety timer, so a
 *   broker outage delays outputs but never loses them; the input that caused them stays
 *   uncommitted meanwhile.
 * - librdkafka's log callback runs on its own threads; it only formats a line, which vd_log
 *   writes with one stdio call. */
#define _GNU_SOURCE
#include "vd_kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sys/time.h>

#include "vd_config.h"
#include "vd_lanes.h"
#include "vd_log.h"

#define CE_STRUCTURED "application/cloudevents+json; charset=UTF-8"

#define DRAIN_BUDGET 500
#define SAFETY_POLL_MS 100
#define RETRY_DELAY_MS 500
/* Intake held this long by back-pressure becomes a pause of the partitions: the consumer must be
 * polled again (rebalances, max.poll.interval.ms), and a pause makes that safe. */
#define HOLD_MAX_MS 5000

struct retry {
    enum vd_output_topic topic;
    enum vd_lane via;  /* produced (and produced again) through this producer */
    unsigned slot;     /* vd_lanes_slot() */
    char *key;
    size_t keylen;
    char *payload;
    size_t len;
    void *opaque;
    uint64_t due_ms;
    struct retry *next;
};

struct qwatch {
    int fds[2];
    uv_poll_t poll;
    int poll_inited;
    rd_kafka_queue_t *q;
};

struct producer {
    rd_kafka_t *rk; /* NULL: not used (the prompt one when linger.ms is 0 anyway) */
    struct qwatch q;
    /* Every output topic, from the start: librdkafka asks for their metadata at once, not at
     * the first output (which waited up to half a second for it: a first burst stalled). */
    rd_kafka_topic_t *topics[VD_OUT__COUNT];
};

struct vd_kafka {
    uv_loop_t *loop;
    const struct vd_config *cfg;
    struct vd_kafka_handler h;
    void *arg;
    rd_kafka_t *consumer;
    struct producer prod[VD_LANE__COUNT];
    struct vd_lanes lanes;
    rd_kafka_topic_partition_list_t *assigned;
    struct qwatch cq;
    uv_idle_t idle;
    uv_timer_t timer;
    int open_handles;
    int timers_inited;
    int consumer_closed;
    rd_kafka_queue_t *close_q; /* set while leaving the group */
    int paused;      /* the partitions are paused in librdkafka */
    int pause_req;   /* paused on request (Redis cannot take work, stopping) */
    int held;        /* back-pressure: messages are left in librdkafka's queue */
    int hold_paused; /* held for HOLD_MAX_MS: paused as well */
    uint64_t held_since;
    int ever_assigned;
    int fatal; /* on_fatal ran */
    struct retry *retry_head, *retry_tail;
    size_t nretry;
    size_t inflight; /* produced, not yet acknowledged */
    struct vd_kafka_stats stats;
    const char *out_topics[VD_OUT__COUNT];
};

/* Properties the delivery guarantees rest on: {name, value set, value librdkafka reports}. */
static const char *locked_consumer[][3] = {
    {"enable.auto.offset.store", "false", "false"},
    {"partition.assignment.strategy", "cooperative-sticky", "cooperative-sticky"},
};
static const char *locked_producer[][3] = {
    {"enable.idempotence", "true", "true"},
    {"acks", "all", "-1"},
};

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    int l = level <= 3 ? VD_LOG_ERROR : level <= 4 ? VD_LOG_WARN : level <= 6 ? VD_LOG_INFO : VD_LOG_DEBUG;
    vd_log(l, "kafka %s %s: %s", rd_kafka_name(rk), fac, buf);
}

static int set(rd_kafka_conf_t *conf, const char *name, const char *value, const char *origin,
               char *err, size_t errlen) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "%s: %s", origin, errstr);
        return -1;
    }
    return 0;
}

/* Applies the daemon's defaults, then the user's pass-through properties, then checks that
 * none of the properties the delivery guarantees rest on were changed. */
static rd_kafka_conf_t *build_conf(const struct vd_config *cfg, int consumer, char *err,
                                   size_t errlen) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const struct vd_config_props *props = consumer ? &cfg->consumer_props : &cfg->producer_props;
    const char *(*locked)[3] = consumer ? locked_consumer : locked_producer;
    size_t nlocked = 2;
    const char *prefix = consumer ? "kafka.consumer." : "kafka.producer.";
    if (set(conf, "bootstrap.servers", cfg->kafka_brokers, "kafka.brokers", err, errlen) < 0)
        goto err;
    if (set(conf, "client.id", consumer ? "vdispatchd-consumer" : "vdispatchd-producer",
            "client.id", err, errlen) < 0)
        goto err;
    for (size_t i = 0; i < nlocked; i++)
        if (set(conf, locked[i][0], locked[i][1], locked[i][0], err, errlen) < 0) goto err;
    if (consumer) {
        if (set(conf, "group.id", cfg->kafka_group_id, "kafka.group_id", err, errlen) < 0 ||
            set(conf, "auto.offset.reset", "earliest", "auto.offset.reset", err, errlen) < 0 ||
            set(conf, "enable.auto.commit", "true", "enable.auto.commit", err, errlen) < 0 ||
            set(conf, "auto.commit.interval.ms", "1000", "auto.commit.interval.ms", err, errlen) < 0 ||
            set(conf, "enable.partition.eof", "false", "enable.partition.eof", err, errlen) < 0 ||
            /* What librdkafka prefetches counts toward the daemon's memory too: at most 4 MiB
             * queued, 1 MiB per fetch from each broker (librdkafka's defaults allow 64 MiB and
             * 50 MiB). Once its queue reaches the bound, librdkafka 2.0 fetches again only when
             * its broker thread next wakes, up to a second later, whatever the daemon takes
             * out meanwhile: so the queue must hold most of a second of what the daemon drains
             * in a burst, or intake stalls after each hold (with 2 MiB and 1,000 volunteers,
             * the daemon ran dry for 0.3 s of every second; docs/performance.md). */
            set(conf, "queued.max.messages.kbytes", "4096", "queued.max.messages.kbytes", err, errlen) < 0 ||
            set(conf, "fetch.max.bytes", "1048576", "fetch.max.bytes", err, errlen) < 0 ||
            /* A broker that holds a fetch until its wait runs out (the embedded mock cluster
             * does) delays a lone request by up to this; librdkafka's default is 500 ms. A
             * real broker answers as soon as data arrives: there a larger value only saves
             * idle fetches. */
            set(conf, "fetch.wait.max.ms", "10", "fetch.wait.max.ms", err, errlen) < 0 ||
            /* Consumer lag and broker states for /metrics. */
            set(conf, "statistics.interval.ms", "10000", "statistics.interval.ms", err, errlen) < 0)
            goto err;
    } else {
        /* A produce request carries at most 256 KiB (librdkafka's default: 1 MB): with up to
         * five in flight per broker, its buffers are what a fast stream of outputs leaves in
         * memory. An output is at most a few KiB (a dead letter keeps 4 KiB of its input). */
        /* Connected to every broker from the start: librdkafka otherwise connects to a
         * partition's leader once a message waits for it, and notices that need only when
         * the broker's thread next wakes, up to a second later. The first output for each
         * broker waited so (and a prompt or batching producer that had not been used before
         * held every later output of its keys behind it). */
        if (set(conf, "enable.sparse.connections", "false", "enable.sparse.connections", err, errlen) < 0 ||
            set(conf, "linger.ms", "5", "linger.ms", err, errlen) < 0 ||
            set(conf, "message.max.bytes", "262144", "message.max.bytes", err, errlen) < 0 ||
            set(conf, "message.timeout.ms", "30000", "message.timeout.ms", err, errlen) < 0)
            goto err;
    }
    for (size_t i = 0; i < props->n; i++) {
        char origin[600];
        snprintf(origin, sizeof origin, "%s: %s%s", props->v[i].origin, prefix, props->v[i].name);
        if (set(conf, props->v[i].name, props->v[i].value, origin, err, errlen) < 0) goto err;
    }
    for (size_t i = 0; i < nlocked; i++) {
        char val[128];
        size_t vlen = sizeof val;
        if (rd_kafka_conf_get(conf, locked[i][0], val, &vlen) == RD_KAFKA_CONF_OK &&
            strcmp(val, locked[i][2]) != 0) {
            const char *origin = "?";
            for (size_t p = 0; p < props->n; p++)
                if (strcmp(props->v[p].name, locked[i][0]) == 0) origin = props->v[p].origin;
            snprintf(err, errlen, "%s: %s%s: must stay %s (the delivery guarantees rely on it)",
                     origin, prefix, locked[i][0], locked[i][1]);
            goto err;
        }
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    return conf;
err:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

int vd_kafka_check_config(const struct vd_config *cfg, char *err, size_t errlen) {
    for (int consumer = 0; consumer < 2; consumer++) {
        rd_kafka_conf_t *conf = build_conf(cfg, consumer, err, errlen);
        if (!conf) return -1;
        rd_kafka_conf_destroy(conf);
    }
    return 0;
}

static enum vd_topic_kind topic_kind(const struct vd_kafka *k, const char *topic) {
    if (strcmp(topic, k->cfg->topic_requests) == 0) return VD_TOPIC_REQUESTS;
    if (strcmp(topic, k->cfg->topic_volunteers) == 0) return VD_TOPIC_VOLUNTEERS;
    return VD_TOPIC_RESPONSES;
}

/* librdkafka's statistics (the consumer's, on the loop thread): the lag of the partitions
 * this instance holds, per input topic, and how many brokers it is connected to. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    struct vd_kafka *k = opaque;
    json_t *st = json_loadb(json, len, 0, NULL);
    if (!st) return 0;
    int up = 0;
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(st, "brokers"), name, v) {
        if (json_integer_value(json_object_get(v, "nodeid")) >= 0 &&
            json_is_string(json_object_get(v, "state")) &&
            strcmp(json_string_value(json_object_get(v, "state")), "UP") == 0)
            up++;
    }
    int64_t lag[3] = {-1, -1, -1};
    json_object_foreach(json_object_get(st, "topics"), name, v) {
        enum vd_topic_kind kind = topic_kind(k, name);
        if (kind == VD_TOPIC_RESPONSES && strcmp(name, k->cfg->topic_responses) != 0) continue;
        const char *pid;
        json_t *p;
        json_object_foreach(json_object_get(v, "partitions"), pid, p) {
            json_int_t l = json_integer_value(json_object_get(p, "consumer_lag"));
            if (!json_is_true(json_object_get(p, "desired")) || l < 0) continue;
            lag[kind] = (lag[kind] < 0 ? 0 : lag[kind]) + l;
        }
    }
    json_decref(st);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    memcpy(k->stats.lag, lag, sizeof lag);
    k->stats.brokers_up = up;
    k->stats.stats_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    return 0; /* librdkafka frees json */
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    struct vd_kafka *k = opaque;
    k->stats.rebalances++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, parts);
        if (e) {
            vd_error("kafka: incremental assign failed: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            return;
        }
        for (int i = 0; i < parts->cnt; i++) {
            rd_kafka_topic_partition_t *p = &parts->elems[i];
            rd_kafka_topic_partition_list_add(k->assigned, p->topic, p->partition);
            if (k->h.on_assign) k->h.on_assign(k->arg, p->topic, p->partition, topic_kind(k, p->topic));
        }
        if (k->paused && parts->cnt) rd_kafka_pause_partitions(rk, parts);
        vd_info("kafka: assigned %d partition(s), %d in all", parts->cnt, k->assigned->cnt);
        k->ever_assigned = 1;
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++) {
            rd_kafka_topic_partition_t *p = &parts->elems[i];
            rd_kafka_topic_partition_list_del(k->assigned, p->topic, p->partition);
            if (k->h.on_revoke) k->h.on_revoke(k->arg, p->topic, p->partition, topic_kind(k, p->topic));
        }
        /* Commit what is stored for the leaving partitions before another member takes them. */
        if (!k->consumer_closed && !k->close_q) rd_kafka_commit(rk, NULL, 1);
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e) {
            vd_error("kafka: incremental unassign failed: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
        vd_info("kafka: revoked %d partition(s), %d left", parts->cnt, k->assigned->cnt);
    } else {
        vd_error("kafka: rebalance error: %s", rd_kafka_err2str(err));
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e) rd_kafka_error_destroy(e);
    }
}

/* A fatal error of either client: said once, and the handler stops the daemon. */
static void raise_fatal(struct vd_kafka *k, rd_kafka_t *rk) {
    char buf[512], why[600];
    if (k->fatal) return;
    k->fatal = 1;
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(rk, buf, sizeof buf);
    snprintf(why, sizeof why, "kafka %s: fatal error %s: %s", rd_kafka_name(rk), rd_kafka_err2name(e), buf);
    vd_error("%s", why);
    if (k->h.on_fatal) k->h.on_fatal(k->h.fatal_arg, why);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        raise_fatal(opaque, rk);
        return;
    }
    /* Connection errors are already in librdkafka's own log lines; only say more when no
     * broker at all can be reached. */
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        vd_warn("kafka %s: all brokers are down; retrying", rd_kafka_name(rk));
    else
        vd_debug("kafka %s: %s", rd_kafka_name(rk), reason);
}

static void enqueue_retry(struct vd_kafka *k, struct retry *r) {
    r->due_ms = uv_now(k->loop) + RETRY_DELAY_MS;
    r->next = NULL;
    if (k->retry_tail) k->retry_tail->next = r; else k->retry_head = r;
    k->retry_tail = r;
    k->nretry++;
}

/* Tries to produce; on a local failure the message goes to the retry list (owned there). */
static void produce_or_retry(struct vd_kafka *k, struct retry *r) {
    rd_kafka_resp_err_t e = rd_kafka_producev(
        k->prod[r->via].rk, RD_KAFKA_V_RKT(k->prod[r->via].topics[r->topic]),
        RD_KAFKA_V_KEY(r->key, r->keylen), RD_KAFKA_V_VALUE(r->payload, r->len),
        /* The CloudEvents Kafka binding: a structured-mode event says so. */
        RD_KAFKA_V_HEADER("content-type", CE_STRUCTURED, sizeof CE_STRUCTURED - 1),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        /* Nothing more will be produced: the output stays unacknowledged (its input
         * uncommitted) until the daemon exits. */
        enqueue_retry(k, r);
        return;
    }
    if (e) {
        vd_warn("kafka: produce to %s failed (%s); will retry", k->out_topics[r->topic],
                rd_kafka_err2str(e));
        k->stats.delivery_retries++;
        enqueue_retry(k, r);
    }
}

static void free_retry(struct retry *r) {
    free(r->key);
    free(r->payload);
    free(r);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    struct vd_kafka *k = opaque;
    struct retry *r = m->_private;
    if (m->err) {
        if (!k->fatal)
            vd_warn("kafka: delivery to %s failed (%s); will produce again",
                    k->out_topics[r->topic], rd_kafka_err2str(m->err));
        k->stats.delivery_retries++;
        enqueue_retry(k, r);
        return;
    }
    k->stats.delivered++;
    k->inflight--;
    vd_lanes_done(&k->lanes, r->via, r->slot);
    void *o = r->opaque;
    free_retry(r);
    if (k->h.on_delivered) k->h.on_delivered(k->arg, o);
}

void vd_kafka_produce(struct vd_kafka *k, enum vd_output_topic topic, const char *key,
                      size_t keylen, char *payload, size_t len, void *opaque) {
    struct retry *r = calloc(1, sizeof *r);
    char *kcopy = keylen ? malloc(keylen) : NULL;
    if (!r || (keylen && !kcopy)) {
        /* Out of memory: nothing sensible is left to do for a dispatcher. */
        vd_error("kafka: out of memory producing to %s", k->out_topics[topic]);
        abort();
    }
    if (keylen) memcpy(kcopy, key, keylen);
    r->topic = topic;
    r->key = kcopy;
    r->keylen = keylen;
    r->payload = payload;
    r->len = len;
    r->opaque = opaque;
    r->slot = vd_lanes_slot(topic, key, keylen);
    r->via = vd_lanes_take(&k->lanes, r->slot);
    k->inflight++;
    k->stats.produced++;
    if (r->via == VD_LANE_PROMPT) k->stats.produced_prompt++;
    produce_or_retry(k, r);
}

static void serve_retries(struct vd_kafka *k) {
    uint64_t now = uv_now(k->loop);
    if (k->fatal) return;
    while (k->retry_head && k->retry_head->due_ms <= now) {
        struct retry *r = k->retry_head;
        k->retry_head = r->next;
        if (!k->retry_head) k->retry_tail = NULL;
        k->nretry--;
        produce_or_retry(k, r);
        if (k->retry_tail == r) break; /* went straight back: try the rest later */
    }
}

/* Serves the consumer queue for at most DRAIN_BUDGET events. Returns 1 if more may wait. */
static int drain_consumer(struct vd_kafka *k) {
    if (k->consumer_closed || k->close_q) return 0;
    for (int i = 0; i < DRAIN_BUDGET; i++) {
        /* Held: what was fetched waits in librdkafka's queue (queued.max.messages.kbytes
         * bounds it and stops fetching), nothing is fetched twice. Paused partitions deliver
         * nothing, so a paused consumer is polled (rebalances, max.poll.interval.ms). */
        if (k->held && !k->paused) return 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, 0);
        if (!m) return 0;
        if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
            /* A consumer's fatal error comes as a message, not through error_cb. */
            rd_kafka_message_destroy(m);
            raise_fatal(k, k->consumer);
            return 0;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                vd_warn("kafka: consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        k->stats.consumed++;
        k->h.on_message(k->arg, m, topic_kind(k, rd_kafka_topic_name(m->rkt)));
    }
    return 1;
}

static int drain_producer(struct vd_kafka *k) {
    int more = 0;
    for (int p = 0; p < VD_LANE__COUNT; p++) {
        if (!k->prod[p].rk) continue;
        int i = 0;
        while (i < DRAIN_BUDGET && rd_kafka_poll(k->prod[p].rk, 0) > 0) i++;
        if (i == DRAIN_BUDGET) more = 1;
    }
    return more;
}

static void sync_pause(struct vd_kafka *k);

static void on_idle(uv_idle_t *h) {
    struct vd_kafka *k = h->data;
    int more = drain_producer(k);
    more |= drain_consumer(k);
    if (!more) uv_idle_stop(h);
}

static void on_readable(uv_poll_t *h, int status, int events) {
    struct vd_kafka *k = h->data;
    struct qwatch *w = (struct qwatch *)((char *)h - offsetof(struct qwatch, poll));
    char buf[256];
    while (read(w->fds[0], buf, sizeof buf) > 0) {
    }
    if (drain_producer(k) | drain_consumer(k)) uv_idle_start(&k->idle, on_idle);
}

static void on_timer(uv_timer_t *t) {
    struct vd_kafka *k = t->data;
    if (k->held && !k->hold_paused && uv_now(k->loop) - k->held_since >= HOLD_MAX_MS) {
        k->hold_paused = 1;
        sync_pause(k);
    }
    serve_retries(k);
    if (drain_producer(k) | drain_consumer(k)) uv_idle_start(&k->idle, on_idle);
}

static int watch_queue(struct vd_kafka *k, struct qwatch *w, rd_kafka_queue_t *q, char *err,
                       size_t errlen) {
    w->q = q;
    if (pipe2(w->fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    rd_kafka_queue_io_event_enable(q, w->fds[1], "1", 1);
    uv_poll_init(k->loop, &w->poll, w->fds[0]);
    w->poll.data = k;
    w->poll_inited = 1;
    k->open_handles++;
    uv_poll_start(&w->poll, UV_READABLE, on_readable);
    return 0;
}

struct vd_kafka *vd_kafka_new(uv_loop_t *loop, const struct vd_config *cfg,
                              const struct vd_kafka_handler *h, void *arg, char *err,
                              size_t errlen) {
    char errstr[512];
    struct vd_kafka *k = calloc(1, sizeof *k);
    if (k) k->stats.lag[0] = k->stats.lag[1] = k->stats.lag[2] = -1;
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->loop = loop;
    k->cfg = cfg;
    k->h = *h;
    k->arg = arg;
    k->cq.fds[0] = k->cq.fds[1] = -1;
    for (int p = 0; p < VD_LANE__COUNT; p++) k->prod[p].q.fds[0] = k->prod[p].q.fds[1] = -1;
    k->out_topics[VD_OUT_ASSIGNMENTS] = cfg->topic_assignments;
    k->out_topics[VD_OUT_NOTIFICATIONS] = cfg->topic_notifications;
    k->out_topics[VD_OUT_DEADLETTER] = cfg->topic_deadletter;
    k->out_topics[VD_OUT_REQUESTS] = cfg->topic_requests;
    k->assigned = rd_kafka_topic_partition_list_new(16);

    rd_kafka_conf_t *pconf = build_conf(cfg, 0, err, errlen);
    if (!pconf) goto err;
    rd_kafka_conf_set_opaque(pconf, k);
    rd_kafka_conf_set_dr_msg_cb(pconf, dr_cb);
    rd_kafka_conf_set_error_cb(pconf, error_cb);
    /* The prompt producer: the same settings without the linger (and none when the linger
     * is already 0). */
    rd_kafka_conf_t *qconf = NULL;
    char val[128];
    size_t vlen = sizeof val;
    if (rd_kafka_conf_get(pconf, "linger.ms", val, &vlen) == RD_KAFKA_CONF_OK &&
        strtod(val, NULL) > 0) {
        qconf = rd_kafka_conf_dup(pconf);
        rd_kafka_conf_set(qconf, "linger.ms", "0", errstr, sizeof errstr);
        vlen = sizeof val;
        if (rd_kafka_conf_get(qconf, "client.id", val, &vlen) == RD_KAFKA_CONF_OK &&
            strcmp(val, "vdispatchd-producer") == 0)
            rd_kafka_conf_set(qconf, "client.id", "vdispatchd-producer-prompt", errstr, sizeof errstr);
    }
    for (int p = 0; p < VD_LANE__COUNT; p++) {
        rd_kafka_conf_t *c = p == VD_LANE_BATCH ? pconf : qconf;
        if (!c) continue;
        k->prod[p].rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof errstr);
        if (!k->prod[p].rk) {
            snprintf(err, errlen, "kafka producer: %s", errstr);
            rd_kafka_conf_destroy(c);
            if (p == VD_LANE_BATCH && qconf) rd_kafka_conf_destroy(qconf);
            goto err;
        }
    }
    for (int p = 0; p < VD_LANE__COUNT; p++)
        for (int t = 0; k->prod[p].rk && t < VD_OUT__COUNT; t++)
            if (!(k->prod[p].topics[t] = rd_kafka_topic_new(k->prod[p].rk, k->out_topics[t], NULL))) {
                snprintf(err, errlen, "kafka producer: topic %s: %s", k->out_topics[t],
                         rd_kafka_err2str(rd_kafka_last_error()));
                goto err;
            }
    vd_lanes_init(&k->lanes, k->prod[VD_LANE_PROMPT].rk != NULL);

    rd_kafka_conf_t *cconf = build_conf(cfg, 1, err, errlen);
    if (!cconf) goto err;
    rd_kafka_conf_set_opaque(cconf, k);
    rd_kafka_conf_set_rebalance_cb(cconf, rebalance_cb);
    rd_kafka_conf_set_error_cb(cconf, error_cb);
    rd_kafka_conf_set_stats_cb(cconf, stats_cb);
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, errstr, sizeof errstr);
    if (!k->consumer) {
        snprintf(err, errlen, "kafka consumer: %s", errstr);
        rd_kafka_conf_destroy(cconf);
        goto err;
    }
    rd_kafka_poll_set_consumer(k->consumer);

    uv_idle_init(loop, &k->idle);
    k->idle.data = k;
    uv_timer_init(loop, &k->timer);
    k->timer.data = k;
    k->open_handles += 2;
    k->timers_inited = 1;
    if (watch_queue(k, &k->cq, rd_kafka_queue_get_consumer(k->consumer), err, errlen) < 0)
        goto err;
    for (int p = 0; p < VD_LANE__COUNT; p++)
        if (k->prod[p].rk &&
            watch_queue(k, &k->prod[p].q, rd_kafka_queue_get_main(k->prod[p].rk), err, errlen) < 0)
            goto err;
    uv_timer_start(&k->timer, on_timer, SAFETY_POLL_MS, SAFETY_POLL_MS);

    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(3);
    rd_kafka_topic_partition_list_add(topics, cfg->topic_requests, RD_KAFKA_PARTITION_UA);
    rd_kafka_topic_partition_list_add(topics, cfg->topic_volunteers, RD_KAFKA_PARTITION_UA);
    rd_kafka_topic_partition_list_add(topics, cfg->topic_responses, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(k->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        snprintf(err, errlen, "kafka subscribe: %s", rd_kafka_err2str(e));
        goto err;
    }
    return k;
err:
    vd_kafka_free(k, 0, 1000);
    return NULL;
}

void vd_kafka_store_offset(struct vd_kafka *k, const char *topic, int32_t partition,
                           int64_t next_offset) {
    if (k->consumer_closed) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = next_offset;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(k->consumer, l);
    if (e || l->elems[0].err)
        vd_debug("kafka: offset %lld for %s[%d] not stored: %s", (long long)next_offset, topic,
                 (int)partition, rd_kafka_err2str(e ? e : l->elems[0].err));
    rd_kafka_topic_partition_list_destroy(l);
}

static void sync_pause(struct vd_kafka *k) {
    int pause = k->pause_req || k->hold_paused;
    if (k->paused == pause || k->consumer_closed) return;
    k->paused = pause;
    if (k->assigned->cnt) {
        if (pause)
            rd_kafka_pause_partitions(k->consumer, k->assigned);
        else
            rd_kafka_resume_partitions(k->consumer, k->assigned);
    }
    /* Back-pressure can toggle it often: /readyz and vd_intake_paused say it; the log only at
     * debug level (a Redis refusal that pauses it is said by the Redis client). */
    vd_debug("kafka: intake %s", pause ? "paused" : "resumed");
}

void vd_kafka_pause_all(struct vd_kafka *k, int pause) {
    k->pause_req = pause;
    sync_pause(k);
}

void vd_kafka_hold(struct vd_kafka *k, int hold) {
    if (k->held == hold) return;
    k->held = hold;
    if (hold) {
        k->held_since = uv_now(k->loop);
        return;
    }
    k->hold_paused = 0;
    sync_pause(k);
    if (!k->consumer_closed) uv_idle_start(&k->idle, on_idle); /* take what waits */
}

int vd_kafka_is_paused(const struct vd_kafka *k) { return k->paused || k->held; }
int vd_kafka_is_fatal(const struct vd_kafka *k) { return k->fatal; }
size_t vd_kafka_unacked(const struct vd_kafka *k) { return k->inflight; }
int vd_kafka_has_assignment(const struct vd_kafka *k) { return k->ever_assigned; }
const struct vd_kafka_stats *vd_kafka_stats(const struct vd_kafka *k) { return &k->stats; }

int vd_kafka_close_start(struct vd_kafka *k) {
    if (!k->consumer || k->consumer_closed || k->close_q) return 0;
    /* Stored offsets go out now; librdkafka commits them again as it leaves the group. */
    rd_kafka_resp_err_t e = rd_kafka_commit(k->consumer, NULL, 1);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        vd_warn("kafka: final commit not sent: %s", rd_kafka_err2str(e));
    k->close_q = rd_kafka_queue_new(k->consumer);
    rd_kafka_error_t *err = rd_kafka_consumer_close_queue(k->consumer, k->close_q);
    if (err) {
        vd_warn("kafka: consumer close: %s", rd_kafka_error_string(err));
        rd_kafka_error_destroy(err);
        return -1;
    }
    return 0;
}

int vd_kafka_close_poll(struct vd_kafka *k) {
    if (!k->consumer || k->consumer_closed) return 1;
    if (!k->close_q) return 0;
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(k->close_q, 0)) != NULL) {
        /* The revocation that leaving causes arrives here as an event, not as a callback. */
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
            rebalance_cb(k->consumer, rd_kafka_event_error(ev),
                         rd_kafka_event_topic_partition_list(ev), k);
        rd_kafka_event_destroy(ev);
    }
    if (!rd_kafka_consumer_closed(k->consumer)) return 0;
    k->consumer_closed = 1;
    vd_info("kafka: consumer closed");
    return 1;
}

static void on_close(uv_handle_t *h) {
    struct vd_kafka *k = h->data;
    if (--k->open_handles == 0) free(k);
}

static void unwatch(struct qwatch *w) {
    if (w->q) {
        rd_kafka_queue_io_event_enable(w->q, -1, NULL, 0);
        rd_kafka_queue_destroy(w->q);
        w->q = NULL;
    }
}

/* Destroys both librdkafka handles on a helper thread and waits for it at most ms: when the
 * brokers are gone, librdkafka can wait seconds on requests that will never be answered, and
 * the stop must stay within its budget. Returns 0 when destroyed, -1 when left behind (the
 * process is about to exit; the thread goes on with it). */
struct destroyer {
    rd_kafka_t *consumer, *producer[VD_LANE__COUNT];
    int consumer_closed;
    atomic_int done;
};

static void *destroy_thread(void *arg) {
    struct destroyer *x = arg;
    if (x->consumer)
        rd_kafka_destroy_flags(x->consumer, x->consumer_closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (int p = 0; p < VD_LANE__COUNT; p++)
        if (x->producer[p]) rd_kafka_destroy(x->producer[p]);
    atomic_store(&x->done, 1);
    return NULL;
}

static int destroy_bounded(struct vd_kafka *k, int ms) {
    struct destroyer *x = calloc(1, sizeof *x);
    if (!x) return -1;
    x->consumer = k->consumer;
    for (int p = 0; p < VD_LANE__COUNT; p++) {
        x->producer[p] = k->prod[p].rk;
        k->prod[p].rk = NULL;
    }
    x->consumer_closed = k->consumer_closed;
    k->consumer = NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, destroy_thread, x) != 0) {
        destroy_thread(x);
        free(x);
        return 0;
    }
    for (int waited = 0; !atomic_load(&x->done) && waited < ms; waited += 10) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!atomic_load(&x->done)) {
        pthread_detach(t);
        vd_warn("kafka: client still shutting down after %d ms; exiting without it", ms);
        return -1; /* x stays with the thread */
    }
    pthread_join(t, NULL);
    free(x);
    return 0;
}

int vd_kafka_free(struct vd_kafka *k, int timeout_ms, int destroy_ms) {
    if (!k) return 0;
    int abandoned = 0;
    if (k->prod[VD_LANE_BATCH].rk && timeout_ms > 0 && !k->fatal) {
        /* Produce what still waits in the retry list, then give the brokers a last chance. */
        uint64_t deadline = uv_now(k->loop) + (uint64_t)timeout_ms;
        while ((k->inflight || k->nretry) && uv_now(k->loop) < deadline) {
            for (struct retry *r = k->retry_head; r; r = r->next) r->due_ms = 0;
            serve_retries(k);
            for (int p = 0; p < VD_LANE__COUNT; p++)
                if (k->prod[p].rk) rd_kafka_flush(k->prod[p].rk, 50);
            uv_update_time(k->loop);
        }
        if (k->inflight)
            vd_error("kafka: %zu output(s) not acknowledged at exit; their inputs stay uncommitted",
                     k->inflight);
    }
    unwatch(&k->cq);
    for (int p = 0; p < VD_LANE__COUNT; p++) unwatch(&k->prod[p].q);
    if (k->close_q) rd_kafka_queue_destroy(k->close_q);
    k->close_q = NULL;
    if (!k->consumer_closed && k->consumer)
        vd_warn("kafka: leaving without a clean group exit; the group rebalances after "
                "session.timeout.ms");
    for (int p = 0; p < VD_LANE__COUNT; p++)
        for (int t = 0; t < VD_OUT__COUNT; t++)
            if (k->prod[p].topics[t]) rd_kafka_topic_destroy(k->prod[p].topics[t]);
    if (destroy_bounded(k, destroy_ms) < 0) abandoned = 1;
    while (k->retry_head) {
        struct retry *r = k->retry_head;
        k->retry_head = r->next;
        free_retry(r);
    }
    rd_kafka_topic_partition_list_destroy(k->assigned);
    int handles = k->open_handles;
    if (handles == 0) {
        free(k);
        return abandoned ? -1 : 0;
    }
    if (k->timers_inited) {
        uv_close((uv_handle_t *)&k->idle, on_close);
        uv_close((uv_handle_t *)&k->timer, on_close);
    }
    struct qwatch *ws[1 + VD_LANE__COUNT] = {&k->cq};
    for (int p = 0; p < VD_LANE__COUNT; p++) ws[1 + p] = &k->prod[p].q;
    for (int i = 0; i < 1 + VD_LANE__COUNT; i++) {
        if (ws[i]->poll_inited) {
            uv_poll_stop(&ws[i]->poll);
            uv_close((uv_handle_t *)&ws[i]->poll, on_close);
        }
        if (ws[i]->fds[0] >= 0) close(ws[i]->fds[0]);
        if (ws[i]->fds[1] >= 0) close(ws[i]->fds[1]);
    }
    return abandoned ? -1 : 0;
}
