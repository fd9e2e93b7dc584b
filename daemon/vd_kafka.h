/* vd_kafka: the daemon's Kafka edge, a consumer and idempotent producers driven by libuv.
 *
 * Outputs go through one of two producers: a batching one (kafka.producer.linger.ms, 5 ms by
 * default) while outputs flow, a prompt one (the same settings with linger.ms=0) for outputs
 * that come alone, so a lone request's outcome waits for no linger. The prompt one is used
 * while the batching one has nothing unacknowledged; one key's outputs are never in both at
 * once, so their order holds. With linger.ms set to 0 there is only the one producer.
 *
 * All librdkafka handles signal the loop through rd_kafka_queue_io_event_enable() into a
 * non-blocking pipe watched by uv_poll_t; a readable pipe means "the queue became
 * non-empty", so the handler drains the pipe and then serves the queue until it is empty (in
 * bounded slices, continuing from a uv_idle_t so the loop stays responsive). A safety timer
 * polls as well, which also keeps the consumer inside max.poll.interval.ms.
 *
 * The consumer joins the group with cooperative-sticky assignment, auto-commits only offsets
 * the daemon stores itself (enable.auto.offset.store=false), and reports partitions assigned
 * and revoked to the handler. Messages are handed over one by one; the handler owns them.
 * Outputs that fail delivery (or find the local queue full) are kept and produced again,
 * so an output is never dropped; the handler hears of an output only once it is
 * acknowledged by the brokers. */
#ifndef VD_KAFKA_H
#define VD_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "vd_event.h"

struct vd_config;
struct vd_kafka;

/* Where the daemon produces: its three outputs, and topic.requests for the desk's actions
 * (input events, which the daemon then consumes like any other). */
enum vd_output_topic {
    VD_OUT_ASSIGNMENTS = 0,
    VD_OUT_NOTIFICATIONS,
    VD_OUT_DEADLETTER,
    VD_OUT_REQUESTS,
    VD_OUT__COUNT
};

struct vd_kafka_handler {
    /* A consumed message from an input topic of the given kind; the callee owns m. */
    void (*on_message)(void *arg, rd_kafka_message_t *m, enum vd_topic_kind kind);
    void (*on_assign)(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind);
    void (*on_revoke)(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind);
    /* An output produced with this opaque has been acknowledged by Kafka. */
    void (*on_delivered)(void *arg, void *opaque);
    /* librdkafka raised a fatal error (the idempotent producer fenced or denied, a consumer
     * fenced): the client cannot go on. Called once; why is librdkafka's sentence. */
    void (*on_fatal)(void *fatal_arg, const char *why);
    void *fatal_arg;
};

struct vd_kafka_stats {
    uint64_t consumed, produced, delivered, delivery_retries, rebalances;
    uint64_t produced_prompt; /* of produced, those through the prompt producer */
    /* From librdkafka's statistics (every kafka.consumer.statistics.interval.ms, 10 s by
     * default); stats_ms is 0 until the first arrived. */
    int64_t lag[3];      /* messages behind, per input topic kind, over the partitions this
                            instance holds (-1: unknown, none assigned) */
    int brokers_up;      /* brokers the consumer is connected to */
    uint64_t stats_ms;   /* wall-clock ms of the last statistics */
};

/* Builds both librdkafka configurations from cfg (the daemon's defaults, then
 * kafka.consumer.* / kafka.producer.* on top) and throws them away: used by --check-config.
 * Returns 0, or -1 with librdkafka's own error text and the property's origin in err. */
int vd_kafka_check_config(const struct vd_config *cfg, char *err, size_t errlen);

/* Creates the producer and the consumer, subscribes to the three input topics and starts
 * watching both queues on loop. Returns NULL with err on failure. */
struct vd_kafka *vd_kafka_new(uv_loop_t *loop, const struct vd_config *cfg,
                              const struct vd_kafka_handler *h, void *arg, char *err,
                              size_t errlen);

/* Produces one output. payload (malloc'd) is taken over in every case; key is copied.
 * opaque is given back to on_delivered once Kafka acknowledged the message. */
void vd_kafka_produce(struct vd_kafka *k, enum vd_output_topic topic, const char *key,
                      size_t keylen, char *payload, size_t len, void *opaque);

/* Stores next_offset as the partition's committable position (auto-committed). */
void vd_kafka_store_offset(struct vd_kafka *k, const char *topic, int32_t partition,
                           int64_t next_offset);

/* Pauses or resumes fetching on every assigned partition (Redis outage, stopping). */
void vd_kafka_pause_all(struct vd_kafka *k, int pause);
/* Back-pressure: hold = 1 takes no more messages (what librdkafka prefetched waits in its
 * queue, bounded by queued.max.messages.kbytes; nothing is fetched twice); held for 5 s it
 * pauses the partitions too. hold = 0 takes messages again at once. */
void vd_kafka_hold(struct vd_kafka *k, int hold);
/* 1 while intake is paused or held. */
int vd_kafka_is_paused(const struct vd_kafka *k);
/* 1 once a fatal error was raised: outputs will never be acknowledged. */
int vd_kafka_is_fatal(const struct vd_kafka *k);

/* Messages produced and not yet acknowledged (including those waiting to be produced again). */
size_t vd_kafka_unacked(const struct vd_kafka *k);
/* 1 once the consumer has been assigned partitions at least once. */
int vd_kafka_has_assignment(const struct vd_kafka *k);
const struct vd_kafka_stats *vd_kafka_stats(const struct vd_kafka *k);

/* Shutdown, step one: sends the stored offsets and starts leaving the group, without
 * blocking. Call once no input is in flight, then call vd_kafka_close_poll() from the loop
 * until it returns 1 (or give up: vd_kafka_free() then leaves without the group exit, which
 * is what must happen when the brokers are gone). Returns 0 or -1. */
int vd_kafka_close_start(struct vd_kafka *k);
/* Serves the group exit; returns 1 once the consumer is closed, else 0. */
int vd_kafka_close_poll(struct vd_kafka *k);
/* Releases everything: waits up to flush_ms for outputs still queued, then up to destroy_ms
 * for librdkafka to shut down. Returns 0, or -1 when librdkafka was still shutting down and
 * was left to finish on its own thread (only acceptable right before the process exits; its
 * threads may still log meanwhile). */
int vd_kafka_free(struct vd_kafka *k, int flush_ms, int destroy_ms);

#endif
