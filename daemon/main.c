/* vdispatchd: the volunteer dispatch daemon's entry point and its one server struct.
 *
 * main() parses the command line, loads the config, builds struct vd_server (dispatcher,
 * Redis client, Kafka edge, signals, cron) and runs one libuv loop until a stop. Signals only
 * set flags; the cron (every CRON_MS) acts on them, logs progress and applies back-pressure.
 * Stop sequence: start no new job, let running jobs finish and their outputs be acknowledged
 * (bounded by daemon.shutdown_timeout_ms), commit the stored offsets, leave the group, close
 * the Redis client, then let the loop run out. */
#include <dirent.h>
#include <getopt.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "vd_config.h"
#include "vd_desk.h"
#include "vd_dispatch.h"
#include "vd_http.h"
#include "vd_kafka.h"
#include "vd_log.h"
#include "vd_lua.h"
#include "vd_metrics.h"
#include "vd_redis.h"

#define CRON_MS 100
/* The stop budget (daemon.shutdown_timeout_ms) ends with these two steps. */
#define CLOSE_GROUP_MS 1000   /* leaving the consumer group */
#define CLOSE_FLUSH_MS 400    /* last chance for outputs still queued */
#define CLOSE_DESTROY_MS 1000 /* librdkafka's own shutdown */
#define STATS_EVERY_MS 10000

struct vd_server {
    uv_loop_t *loop;
    struct vd_config cfg;
    struct vd_dispatch *dispatch;
    struct vd_redis *redis;
    struct vd_kafka *kafka;
    struct vd_http *http;
    struct vd_desk *desk;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t cron;
    int stop_requested;
    int reopen_requested;
    int stopping;
    int closing; /* work is done (or out of time): leaving the group */
    int kafka_left_behind; /* librdkafka still shutting down on its own thread at exit */
    int announced_ready;
    char fatal[600]; /* why the process cannot go on ("" while it can): exit status 1 */
    uint64_t stop_started_ms;
    uint64_t last_stats_ms;
    int exit_code;
    double start_time; /* wall clock, seconds since the epoch */
    uint64_t watchdog_us;      /* systemd's WatchdogSec (0: none); pinged at half of it */
    uint64_t last_watchdog_ms;
};

static void usage(FILE *out) {
    fprintf(out,
            "usage: vdispatchd -c FILE [--set section.key=value ...] [--check-config]\n"
            "\n"
            "Consumes volunteer, request and response events from Kafka, matches requests to\n"
            "nearby available volunteers in Redis, and publishes assignments and notifications.\n"
            "\n"
            "  -c, --config FILE     INI configuration (see config/vdispatch.conf)\n"
            "  -s, --set S.K=V       override one key (repeatable), e.g. --set log.level=debug\n"
            "      --check-config    validate the configuration and exit (0 ok, 2 bad)\n"
            "      --dump-config     print the effective configuration and exit\n"
            "  -V, --version         print the version and exit\n"
            "  -h, --help            this text\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reopens the log file.\n"
            "Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.\n");
}

static void on_signal(uv_signal_t *h, int signum) {
    struct vd_server *s = h->data;
    if (signum == SIGHUP)
        s->reopen_requested = 1;
    else
        s->stop_requested++;
}

static void log_stats(struct vd_server *s) {
    const struct vd_dispatch_stats *st = vd_dispatch_stats(s->dispatch);
    const struct vd_kafka_stats *ks = vd_kafka_stats(s->kafka);
    uint64_t unmatched = 0;
    for (int i = 0; i < VD_UNMATCHED__COUNT; i++) unmatched += st->unmatched[i];
    if (s->announced_ready && !s->stopping && !s->fatal[0])
        sd_notifyf(0, "STATUS=%llu confirmed, %llu unmatched, %llu jobs in memory; redis %s",
                   (unsigned long long)st->confirmed, (unsigned long long)unmatched,
                   (unsigned long long)st->jobs_in_memory,
                   vd_redis_is_ready(s->redis) ? "ready" : vd_redis_status(s->redis));
    vd_info("stats: consumed=%llu rejected=%llu confirmed=%llu unmatched=%llu cancelled=%llu "
            "completed=%llu replays=%llu ignored=%llu redis_calls=%llu redis_retries=%llu "
            "in_memory=%llu produced=%llu delivered=%llu mean_match_ms=%.2f rounds=%llu "
            "round_requests=%llu",
            (unsigned long long)ks->consumed, (unsigned long long)st->rejected,
            (unsigned long long)st->confirmed, (unsigned long long)unmatched,
            (unsigned long long)st->cancelled, (unsigned long long)st->completed,
            (unsigned long long)st->replays, (unsigned long long)st->ignored_responses,
            (unsigned long long)st->redis_calls, (unsigned long long)st->redis_retries,
            (unsigned long long)st->jobs_in_memory, (unsigned long long)ks->produced,
            (unsigned long long)ks->delivered,
            st->matches ? (double)st->match_latency_us_sum / (double)st->matches / 1000.0 : 0.0,
            (unsigned long long)st->rounds, (unsigned long long)st->round_requests);
}

/* A fatal condition (Kafka or Redis): the process stops as gracefully as it can and exits 1,
 * so that a supervisor restarts it or pages someone. */
static void on_fatal(struct vd_server *s, const char *why) {
    if (s->fatal[0]) return;
    snprintf(s->fatal, sizeof s->fatal, "%s", why);
    sd_notifyf(0, "STATUS=fatal: %s", why);
    s->exit_code = 1;
    vd_error("fatal: %s; stopping (exit status 1)", why);
    if (!s->stop_requested) s->stop_requested = 1;
}

static void on_kafka_fatal(void *arg, const char *why) { on_fatal(arg, why); }
static void on_redis_fatal(struct vd_redis *r, const char *why, void *arg) { on_fatal(arg, why); }

static void on_redis_ready(struct vd_redis *r, void *arg) {
    struct vd_server *s = arg;
    vd_dispatch_on_redis_ready(r, s->dispatch);
}

/* /healthz: 503 from the moment the process knows it cannot go on. */
static int http_healthy(void *arg, char *why, size_t whylen) {
    struct vd_server *s = arg;
    if (!s->fatal[0]) return 1;
    snprintf(why, whylen, "fatal: %s", s->fatal);
    return 0;
}

/* /readyz: ready once Redis has the library and takes writes, and the consumer has
 * partitions; not while intake is paused. */
static int http_ready(void *arg, char *why, size_t whylen) {
    struct vd_server *s = arg;
    if (s->stopping) {
        snprintf(why, whylen, "stopping");
        return 0;
    }
    if (!vd_redis_is_ready(s->redis)) {
        snprintf(why, whylen, "redis not ready: %s", vd_redis_status(s->redis));
        return 0;
    }
    if (!vd_kafka_has_assignment(s->kafka)) {
        snprintf(why, whylen, "kafka: no partitions assigned yet");
        return 0;
    }
    if (vd_kafka_is_paused(s->kafka)) {
        snprintf(why, whylen, "intake paused (%s)",
                 vd_dispatch_intake_full(s->dispatch) ? "back-pressure: daemon.max_inflight inputs in memory"
                                                      : "waiting for redis");
        return 0;
    }
    return 1;
}

/* librdkafka's view: lag per input topic (over the partitions this instance holds) and the
 * brokers it is connected to. Absent until its first statistics (10 s after start). */
static void kafka_metrics(struct vd_metrics_buf *out, const struct vd_config *cfg,
                          const struct vd_kafka_stats *ks) {
    if (!ks->stats_ms) return;
    const char *topics[3] = {cfg->topic_requests, cfg->topic_volunteers, cfg->topic_responses};
    vd_metrics_header(out, "vd_kafka_consumer_lag",
                      "Messages not yet consumed, per input topic, over the partitions this "
                      "instance holds (librdkafka statistics).",
                      VD_METRICS_GAUGE);
    for (int i = 0; i < 3; i++) {
        if (ks->lag[i] < 0) continue;
        struct vd_metrics_label l = {"topic", topics[i]};
        vd_metrics_sample_double(out, "vd_kafka_consumer_lag", &l, 1, (double)ks->lag[i]);
    }
    vd_metrics_gauge(out, "vd_kafka_brokers_up", "Kafka brokers the consumer is connected to.",
                     ks->brokers_up);
}

/* The process_* family every Prometheus client library exports, from /proc. */
static void process_metrics(struct vd_metrics_buf *out, const struct vd_server *s) {
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* Fields after the command (in parentheses, which may hold spaces). */
        char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0, vsize = 0;
        long rss = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
                               "%*d %*d %*u %lu %ld", &utime, &stime, &vsize, &rss) == 4 && ticks > 0) {
            vd_metrics_counter_double(out, "process_cpu_seconds_total",
                                      "Total user and system CPU time spent in seconds.",
                                      (double)(utime + stime) / (double)ticks);
            vd_metrics_gauge(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                             (double)vsize);
            vd_metrics_gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.",
                             (double)rss * (double)page);
        }
    }
    int fds = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (dir) {
        for (struct dirent *e; (e = readdir(dir));) fds += e->d_name[0] != '.';
        closedir(dir);
        vd_metrics_gauge(out, "process_open_fds", "Number of open file descriptors.", fds - 1);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        vd_metrics_gauge(out, "process_max_fds", "Maximum number of open file descriptors.",
                         (double)rl.rlim_cur);
    vd_metrics_gauge(out, "process_start_time_seconds",
                     "Start time of the process since unix epoch in seconds.", s->start_time);
    vd_metrics_header(out, "vdispatch_build_info",
                      "The build: vdispatchd's version and its Redis Function library.",
                      VD_METRICS_GAUGE);
    struct vd_metrics_label l[2] = {{"version", VD_VERSION}, {"library", VD_LIB_NAME}};
    vd_metrics_sample_double(out, "vdispatch_build_info", l, 2, 1);
}

static void http_metrics(void *arg, struct vd_metrics_buf *out) {
    struct vd_server *s = arg;
    const struct vd_dispatch_stats *st = vd_dispatch_stats(s->dispatch);
    const struct vd_kafka_stats *ks = vd_kafka_stats(s->kafka);
    const struct vd_redis_stats *rs = vd_redis_stats(s->redis);
    const char *types[VD_EV__COUNT], *reasons[VD_UNMATCHED__COUNT], *results[VD_OFFER__COUNT];
    for (int i = 0; i < VD_EV__COUNT; i++) types[i] = vd_event_type_name(i);
    for (int i = 0; i < VD_UNMATCHED__COUNT; i++) reasons[i] = vd_unmatched_reason_name(i);
    for (int i = 0; i < VD_OFFER__COUNT; i++) results[i] = vd_offer_result_name(i);
    vd_metrics_counter(out, "vd_consumed_total", "Input messages consumed.", ks->consumed);
    vd_metrics_counter_family(out, "vd_inputs_total", "Valid input events, by type.", "type",
                              types, st->inputs, VD_EV__COUNT);
    vd_metrics_counter(out, "vd_rejected_total", "Inputs sent to the dead-letter topic.", st->rejected);
    vd_metrics_counter(out, "vd_confirmed_total", "Volunteers confirmed for requests.", st->confirmed);
    vd_metrics_counter_family(out, "vd_unmatched_total", "Requests unmatched, by reason.", "reason",
                              reasons, st->unmatched, VD_UNMATCHED__COUNT);
    vd_metrics_counter(out, "vd_replays_total", "Requests seen again that already had an outcome.",
                       st->replays);
    if (s->desk) vd_desk_metrics(s->desk, out);
    vd_metrics_counter(out, "vd_coordinator_assigned_total",
                       "Volunteers confirmed by a coordinator's vd.request.assign.", st->assigned);
    vd_metrics_counter(out, "vd_coordinator_refused_total",
                       "Coordinators' assignments refused (the coordinator is told why).",
                       st->assign_refused);
    vd_metrics_counter(out, "vd_ignored_responses_total",
                       "Late, duplicate or mismatched responses and cancels.", st->ignored_responses);
    vd_metrics_counter(out, "vd_offers_made_total", "Offers made to volunteers.",
                       st->offers[VD_OFFER_MADE]);
    vd_metrics_counter_family(out, "vd_offers_resolved_total",
                              "Offers that ended, by how (accepted, declined, timed_out, expired).",
                              "result", results + 1, st->offers + 1, VD_OFFER__COUNT - 1);
    vd_histogram_render(out, "vd_request_to_confirmed_seconds",
                        "From a request's own time (its CloudEvents time) to each volunteer's "
                        "confirmation: accepted, assigned at once, or by a coordinator.",
                        &st->request_to_confirmed);
    kafka_metrics(out, &s->cfg, ks);
    process_metrics(out, s);
    vd_metrics_counter(out, "vd_scheduled_total", "Requests that waited for their not_before.",
                       st->scheduled);
    vd_metrics_counter(out, "vd_due_runs_total",
                       "Requests taken up because their due time came (start, deadline, lease).",
                       st->due_runs);
    vd_metrics_counter(out, "vd_cancelled_total", "Requests cancelled.", st->cancelled);
    vd_metrics_counter(out, "vd_completed_total", "Tasks completed.", st->completed);
    vd_metrics_counter(out, "vd_matches_total", "Requests whose matching finished.", st->matches);
    vd_histogram_render(out, "vd_match_seconds",
                        "Time from the start of a request's matching to its outcome.",
                        &st->match_seconds);
    vd_metrics_counter(out, "vd_redis_calls_total", "Redis Function calls made by the dispatcher.",
                       st->redis_calls);
    const char *kinds[VD_CALL__COUNT];
    for (int i = 0; i < VD_CALL__COUNT; i++) kinds[i] = vd_call_kind_name(i);
    vd_metrics_counter_family(out, "vd_redis_calls_by_kind_total",
                              "Redis calls by what they were for (step: an input's own; round, "
                              "widen, claim: matching rounds; settle, due, sweep: housekeeping).",
                              "kind", kinds, st->calls, VD_CALL__COUNT);
    vd_metrics_counter(out, "vd_redis_retries_total",
                       "Jobs retried after an unexpected Redis error reply.", st->redis_retries);
    vd_metrics_counter(out, "vd_redis_waits_total",
                       "Jobs put back to wait while Redis was down or refusing.", st->redis_waits);
    const char *codes[VD_CODE__COUNT];
    for (int i = 0; i < VD_CODE__COUNT; i++) codes[i] = vd_reply_code_name(i);
    vd_metrics_counter_family(out, "vd_redis_refusals_total",
                              "Episodes of Redis refusing work, by the state that began them.",
                              "code", codes, rs->refusals, VD_CODE__COUNT);
    vd_metrics_gauge(out, "vd_redis_refusing", "1 while Redis is up but refuses work.",
                     vd_redis_state(s->redis) == VD_REDIS_REFUSING);
    vd_metrics_counter(out, "vd_redis_library_loads_total",
                       "Loads of the Function library (at start, and after it went missing).",
                       rs->library_loads);
    vd_metrics_counter(out, "vd_redis_timeouts_total", "Redis commands past their deadline.", rs->timeouts);
    vd_metrics_counter(out, "vd_redis_reconnects_total", "Redis reconnections.", rs->reconnects);
    vd_metrics_gauge(out, "vd_redis_up", "1 when Redis is connected and ready.",
                     vd_redis_is_ready(s->redis));
    vd_metrics_counter(out, "vd_produced_total", "Output messages produced.", ks->produced);
    vd_metrics_counter(out, "vd_produced_prompt_total",
                       "Of those, produced without a linger, through the prompt producer (they came alone).",
                       ks->produced_prompt);
    vd_metrics_counter(out, "vd_delivered_total", "Output messages acknowledged by Kafka.", ks->delivered);
    vd_metrics_counter(out, "vd_delivery_retries_total", "Outputs produced again after a failure.",
                       ks->delivery_retries);
    vd_metrics_counter(out, "vd_rebalances_total", "Consumer group rebalances.", ks->rebalances);
    vd_metrics_gauge(out, "vd_jobs_in_memory", "Input messages and due runs held in memory.",
                     (double)st->jobs_in_memory);
    uint64_t where[VD_WHERE__COUNT];
    vd_dispatch_where(s->dispatch, where);
    if (!vd_metrics_header(out, "vd_jobs_by_stage", "Jobs in memory by where they are: queued in "
                           "their partition, running their own Redis call, waiting for their "
                           "pool's next matching round, in a round, waiting for Kafka's "
                           "acknowledgement of their outputs.", VD_METRICS_GAUGE))
        for (int i = 0; i < VD_WHERE__COUNT; i++) {
            struct vd_metrics_label l = {"stage", vd_job_where_name(i)};
            vd_metrics_sample_u64(out, "vd_jobs_by_stage", &l, 1, where[i]);
        }
    vd_metrics_gauge(out, "vd_inputs_in_memory",
                     "Input messages held in memory (bounded by daemon.max_inflight).",
                     (double)st->inputs_in_memory);
    vd_metrics_gauge(out, "vd_inputs_in_memory_max",
                     "The most input messages held in memory at once since the start.",
                     (double)st->inputs_high_water);
    vd_metrics_counter(out, "vd_task_timeouts_total",
                       "Volunteers released because their task outlived matching.task_timeout_s.",
                       st->task_timeouts);
    vd_metrics_counter(out, "vd_stale_requests_total",
                       "Requests older than their record's TTL, dead-lettered, never matched.",
                       st->stale);
    vd_metrics_counter(out, "vd_horizon_rejected_total",
                       "Requests whose not_before lies beyond matching.schedule_horizon_s.",
                       st->horizon_rejected);
    vd_metrics_counter(out, "vd_rounds_total", "Matching rounds (each a round call, widen calls when candidates were too few, and a claim call when anyone was chosen).", st->rounds);
    vd_metrics_counter(out, "vd_round_requests_total",
                       "Requests in matching rounds (a request may be in several).",
                       st->round_requests);
    vd_metrics_counter_double(out, "vd_solve_seconds_total",
                              "Time spent solving the rounds' assignments.", (double)st->solve_us / 1e6);
    vd_metrics_counter(out, "vd_rounds_uncertain_total",
                       "Rounds claimed while some request had not seen far enough to be sure of "
                       "the optimum (the widenings ran out).",
                       st->rounds_uncertain);
    vd_metrics_counter(out, "vd_dense_searches_total",
                       "Widened searches bounded by matching.max_search_points.", st->dense_searches);
    vd_metrics_counter(out, "vd_volunteers_swept_total",
                       "Volunteer records removed after redis.volunteer_ttl_s without an event.",
                       st->volunteers_swept);
    vd_metrics_gauge(out, "vd_fatal", "1 once the process knows it cannot go on (exits 1).",
                     s->fatal[0] != 0);
    vd_metrics_gauge(out, "vd_outputs_unacked", "Outputs waiting for Kafka's acknowledgement.",
                     (double)vd_kafka_unacked(s->kafka));
    vd_metrics_gauge(out, "vd_intake_paused", "1 while intake is paused (Redis, stopping) or held (back-pressure).", vd_kafka_is_paused(s->kafka));
}

/* The Kafka edge's callbacks: inputs go to the dispatcher; a delivery is the desk's or a
 * job's. */
static void kafka_message(void *arg, rd_kafka_message_t *m, enum vd_topic_kind kind) {
    vd_dispatch_on_message(((struct vd_server *)arg)->dispatch, m, kind);
}
static void kafka_assign(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    vd_dispatch_on_assign(((struct vd_server *)arg)->dispatch, topic, partition, kind);
}
static void kafka_revoke(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    vd_dispatch_on_revoke(((struct vd_server *)arg)->dispatch, topic, partition, kind);
}
static void kafka_delivered(void *arg, void *opaque) {
    struct vd_server *s = arg;
    if (s->desk && vd_desk_delivered(s->desk, opaque)) return;
    vd_dispatch_on_delivered(s->dispatch, opaque);
}

static int http_route(void *arg, struct vd_http_request *req) {
    struct vd_server *s = arg;
    return s->desk ? vd_desk_route(s->desk, req) : -1;
}

static void finish_stop(struct vd_server *s) {
    vd_http_free(s->http);
    s->http = NULL;
    uv_timer_stop(&s->cron);
    uv_close((uv_handle_t *)&s->cron, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    log_stats(s);
    if (vd_kafka_free(s->kafka, CLOSE_FLUSH_MS, CLOSE_DESTROY_MS) < 0) s->kafka_left_behind = 1;
    s->kafka = NULL;
    vd_redis_free(s->redis);
    s->redis = NULL;
    vd_desk_free(s->desk);
    s->desk = NULL;
    vd_info("stopped");
}

static void on_cron(uv_timer_t *t) {
    struct vd_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    /* systemd's watchdog: the loop is turning. A stalled loop is killed and restarted. */
    if (s->watchdog_us && now - s->last_watchdog_ms >= s->watchdog_us / 2000) {
        s->last_watchdog_ms = now;
        sd_notify(0, "WATCHDOG=1");
    }
    if (s->reopen_requested) {
        s->reopen_requested = 0;
        if (vd_log_reopen() < 0) vd_error("cannot reopen log file %s", s->cfg.log_file);
        else vd_info("log reopened");
    }
    if (!s->announced_ready && vd_redis_is_ready(s->redis) && vd_kafka_has_assignment(s->kafka)) {
        s->announced_ready = 1;
        vd_info("ready: consuming %s, %s, %s", s->cfg.topic_requests, s->cfg.topic_volunteers,
                s->cfg.topic_responses);
        /* Ready: Redis takes writes and the consumer is in its group (a standby instance that
         * holds no partition is ready too). */
        sd_notifyf(0, "READY=1\nSTATUS=ready: consuming %s, %s, %s", s->cfg.topic_requests,
                   s->cfg.topic_volunteers, s->cfg.topic_responses);
    }
    if (s->stop_requested && !s->stopping) {
        s->stopping = 1;
        sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing work in flight");
        s->stop_started_ms = now;
        vd_info("stopping: finishing work in flight (up to %d ms)", s->cfg.shutdown_timeout_ms);
        vd_dispatch_stop(s->dispatch);
        vd_kafka_pause_all(s->kafka, 1);
    }
    if (s->stopping) {
        uint64_t budget = (uint64_t)s->cfg.shutdown_timeout_ms, spent = now - s->stop_started_ms;
        uint64_t tail = CLOSE_GROUP_MS + CLOSE_FLUSH_MS + CLOSE_DESTROY_MS;
        uint64_t work_deadline = budget > tail ? budget - tail : budget / 2;
        if (!s->closing) {
            vd_dispatch_flush(s->dispatch);
            /* After a fatal Kafka error nothing more will be acknowledged: no use waiting. */
            int idle = (vd_dispatch_idle(s->dispatch) && vd_kafka_unacked(s->kafka) == 0) ||
                       vd_kafka_is_fatal(s->kafka);
            if (!idle && spent < work_deadline && s->stop_requested < 2) return;
            if (!idle)
                vd_warn("stopping with work in flight (its inputs stay uncommitted and will be "
                        "redelivered)");
            s->closing = 1;
            vd_kafka_close_start(s->kafka);
        }
        if (vd_kafka_close_poll(s->kafka) || spent >= work_deadline + CLOSE_GROUP_MS ||
            s->stop_requested > 2)
            finish_stop(s);
        return;
    }
    vd_dispatch_cron(s->dispatch);
    if (s->desk && !s->stopping) vd_desk_cron(s->desk);
    if (now - s->last_stats_ms >= STATS_EVERY_MS) {
        s->last_stats_ms = now;
        log_stats(s);
    }
}

static int load_config(struct vd_config *cfg, const char *path, char **sets, int nsets) {
    char err[1024];
    if (vd_config_init(cfg) < 0) {
        fprintf(stderr, "vdispatchd: out of memory\n");
        return -1;
    }
    if (path && vd_config_load_file(cfg, path, err, sizeof err) < 0) {
        fprintf(stderr, "vdispatchd: %s\n", err);
        return -1;
    }
    for (int i = 0; i < nsets; i++) {
        if (vd_config_set(cfg, sets[i], err, sizeof err) < 0) {
            fprintf(stderr, "vdispatchd: %s\n", err);
            return -1;
        }
    }
    if (vd_config_read_secrets(cfg, err, sizeof err) < 0 || vd_config_validate(cfg, err, sizeof err) < 0 ||
        vd_kafka_check_config(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "vdispatchd: %s\n", err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    /* One malloc arena for all threads. librdkafka runs a dozen threads, and glibc gives each
     * its own arena up to 8 per core, each keeping freed memory of its own: in the
     * benchmark's burst the daemon peaked at 30-33 MB with glibc's default and 26 MB with one
     * arena, at the same throughput (the threads other than the loop allocate little).
     * MALLOC_ARENA_MAX, when set, decides instead. */
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 1);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"set", required_argument, NULL, 's'},
        {"check-config", no_argument, NULL, 'k'}, {"dump-config", no_argument, NULL, 'd'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *path = NULL;
    char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int nsets = 0, check = 0, dump = 0, c;
    if (!sets) return 1;
    while ((c = getopt_long(argc, argv, "c:s:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 's': sets[nsets++] = optarg; break;
        case 'k': check = 1; break;
        case 'd': dump = 1; break;
        case 'V': printf("vdispatchd %s\n", VD_VERSION); free(sets); return 0;
        case 'h': usage(stdout); free(sets); return 0;
        default: usage(stderr); free(sets); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vdispatchd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        free(sets);
        return 2;
    }

    struct vd_server s;
    memset(&s, 0, sizeof s);
    int bad = load_config(&s.cfg, path, sets, nsets);
    free(sets);
    if (bad) {
        vd_config_free(&s.cfg);
        return 2;
    }
    if (check || dump) {
        if (dump) {
            int n = vd_config_dump(&s.cfg, NULL, 0);
            char *buf = malloc((size_t)n + 1);
            if (buf) {
                vd_config_dump(&s.cfg, buf, (size_t)n + 1);
                fputs(buf, stdout);
                free(buf);
            }
        } else {
            printf("%s: configuration ok\n", path ? path : "(defaults)");
        }
        vd_config_free(&s.cfg);
        return 0;
    }
    if (vd_log_open(s.cfg.log_level, s.cfg.log_format, s.cfg.log_file) < 0) {
        fprintf(stderr, "vdispatchd: cannot open log file %s\n", s.cfg.log_file);
        vd_config_free(&s.cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    s.loop = uv_default_loop();
    s.exit_code = 0;
    uint64_t wd_us = 0;
    if (sd_watchdog_enabled(0, &wd_us) > 0) s.watchdog_us = wd_us;
    struct timeval started;
    gettimeofday(&started, NULL);
    s.start_time = (double)started.tv_sec + (double)started.tv_usec / 1e6;
    char err[1024];
    if (s.cfg.http_listen[0]) {
        struct vd_http_handlers hh = {.ready = http_ready, .healthy = http_healthy,
                                      .metrics = http_metrics, .route = http_route};
        s.http = vd_http_new(s.loop, s.cfg.http_listen, &hh, &s, err, sizeof err);
        if (!s.http) {
            vd_error("start failed: %s", err);
            vd_config_free(&s.cfg);
            vd_log_close();
            return 1;
        }
    }
    s.dispatch = vd_dispatch_new(s.loop, &s.cfg);
    struct vd_redis_library lib = {VD_LIB_NAME, vd_lua_library, VD_FN("probe")};
    s.redis = vd_redis_new(s.loop, &s.cfg, &lib, on_redis_ready, on_redis_fatal, &s);
    struct vd_kafka_handler h = {.on_message = kafka_message,
                                 .on_assign = kafka_assign,
                                 .on_revoke = kafka_revoke,
                                 .on_delivered = kafka_delivered,
                                 .on_fatal = on_kafka_fatal,
                                 .fatal_arg = &s};
    s.kafka = vd_kafka_new(s.loop, &s.cfg, &h, &s, err, sizeof err);
    if (!s.dispatch || !s.redis || !s.kafka) {
        vd_error("start failed: %s", s.kafka ? "out of memory" : err);
        vd_redis_free(s.redis);
        vd_http_free(s.http);
        uv_run(s.loop, UV_RUN_DEFAULT);
        vd_dispatch_free(s.dispatch);
        vd_config_free(&s.cfg);
        return 1;
    }
    vd_dispatch_attach(s.dispatch, s.redis, s.kafka);
    s.desk = vd_desk_new(s.loop, &s.cfg, s.redis, s.kafka);

    uv_signal_init(s.loop, &s.sigterm);
    uv_signal_init(s.loop, &s.sigint);
    uv_signal_init(s.loop, &s.sighup);
    s.sigterm.data = s.sigint.data = s.sighup.data = &s;
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_signal_start(&s.sighup, on_signal, SIGHUP);
    uv_timer_init(s.loop, &s.cron);
    s.cron.data = &s;
    uv_timer_start(&s.cron, on_cron, CRON_MS, CRON_MS);
    s.last_stats_ms = uv_now(s.loop);

    vd_info("vdispatchd %s starting: kafka %s group %s, redis %s:%d db %d, mode %s", VD_VERSION,
            s.cfg.kafka_brokers, s.cfg.kafka_group_id,
            s.cfg.redis_unix_socket[0] ? s.cfg.redis_unix_socket : s.cfg.redis_host,
            s.cfg.redis_port, s.cfg.redis_db, s.cfg.offer_timeout_ms > 0 ? "offers" : "direct");
    uv_run(s.loop, UV_RUN_DEFAULT);

    vd_dispatch_free(s.dispatch);
    if (uv_loop_close(s.loop) != 0) vd_warn("loop closed with handles still open");
    vd_config_free(&s.cfg);
    if (!s.kafka_left_behind) vd_log_close(); /* else its threads may still log */
    return s.exit_code;
}
