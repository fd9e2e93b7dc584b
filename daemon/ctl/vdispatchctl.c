/* vdispatchctl: the tool of the people who run vdispatch, coordinators and operators.
 *
 * It reads the daemon's config file. It reads state from Redis and never writes it; actions
 * go through Kafka as input events (vd.request.assign, vd.request.cancelled,
 * vd.task.completed, vd.volunteer.available for a roster), so the daemon applies them like any
 * other input: atomically, on the record of the topic, under every guarantee. After sending an
 * action it waits (--wait) until Redis shows what the daemon made of it.
 *
 * Exit codes: 0 ok, 1 not found or refused, 2 usage or config, 3 Redis or Kafka unreachable
 * (or the daemon did not apply an action within --wait). */
#include <csv.h>
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vd_config.h"
#include "vd_event.h"

#ifndef VD_VERSION
#define VD_VERSION "0"
#endif

enum { EXIT_OK = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

#define DAY_MS 86400000LL
#define SOURCE "vdispatchctl"
#define REJECTS_SHOWN 20

struct ctl {
    struct vd_config cfg;
    int json;
    int wait_s;
    int limit;
    int dry_run;
    int bulk;              /* a roster: many events at once */
    char coordinator[VD_ID_MAX + 1];
    redisContext *redis;
    rd_kafka_t *producer;
    int delivered, failed; /* delivery reports */
    char kafka_err[512];
    unsigned seq;          /* events sent by this run */
};

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("vdispatchctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void print_json(json_t *doc) {
    json_dumpf(doc, stdout, JSON_COMPACT | JSON_REAL_PRECISION(10));
    fputc('\n', stdout);
    json_decref(doc);
}

/* ---- help ---- */

static const char *const usage_text =
    "usage: vdispatchctl -c FILE [--set section.key=value]... [--json] COMMAND [ARGS]\n"
    "\n"
    "Look at what vdispatchd holds in Redis, and act through Kafka as the daemon's inputs.\n"
    "\n"
    "commands:\n"
    "  request RID          a request: state, volunteers, offers, who declined or timed out, why unmatched\n"
    "  volunteer VID        a volunteer: available, pool, task, tasks in the last 24 h\n"
    "  pools                pool sizes (the city, each event, by skill) and requests to staff\n"
    "  open                 requests that need a person, oldest first\n"
    "  assign RID VID       send a named volunteer (vd.request.assign) and say what came of it\n"
    "  cancel RID           cancel a request (vd.request.cancelled)\n"
    "  complete RID VID     report a volunteer's task done (vd.task.completed)\n"
    "  roster FILE          load volunteers from CSV or JSON lines (vd.volunteer.available)\n"
    "  deadletters          recent dead letters and their reasons\n"
    "\n"
    "options:\n"
    "  -c, --config FILE    the daemon's config file (required)\n"
    "  --set section.key=value   override one config key, as vdispatchd does\n"
    "  --json               one JSON document on stdout, for scripts\n"
    "  --wait SECONDS       how long an action waits for the daemon to apply it (default 15)\n"
    "  --coordinator ID     who acts (assign); default $VD_COORDINATOR, else $USER\n"
    "  --limit N            rows of open and deadletters (default 50)\n"
    "  --dry-run            roster: check every row, send nothing\n"
    "  -h, --help           this text; COMMAND --help: that command's\n"
    "  --version\n"
    "\n"
    "exit codes: 0 ok, 1 not found or refused, 2 usage or config, 3 Redis or Kafka unreachable\n"
    "(or the daemon did not apply an action within --wait).\n";

struct command {
    const char *name;
    int nargs;
    const char *args;
    const char *help;
};

static const struct command commands[] = {
    {"request", 1, "RID",
     "Shows a request as Redis holds it. The first line starts with its state (scheduled,\n"
     "searching, offered, confirmed, completed, unmatched, cancelled, expired); then its\n"
     "service, priority and need, each volunteer and what became of them (confirmed, offered,\n"
     "declined, timeout, expired, completed, released, cancelled), refused assignments, why it\n"
     "is unmatched, and its event log. Exit 1 when Redis holds no such request.\n"},
    {"volunteer", 1, "VID",
     "Shows a volunteer. The first line starts with busy (holding a task), available or\n"
     "unavailable; then their pool, place, skills, languages, team, event, daily cap and the\n"
     "tasks of the last 24 h. Exit 1 when Redis holds no such volunteer.\n"},
    {"pools", 0, "",
     "Lists every pool (the city, each event) with the volunteers available in it, by skill,\n"
     "and the requests waiting there for an answer to their offers; then the volunteers with a\n"
     "record and the requests a coordinator must staff.\n"},
    {"open", 0, "",
     "Lists the requests that need a person, oldest first: those that ended unmatched or\n"
     "expired with volunteers missing, with why. Assign a volunteer or cancel to close one.\n"
     "--limit N rows (default 50).\n"},
    {"assign", 2, "RID VID",
     "Sends vd.request.assign (coordinator: --coordinator, $VD_COORDINATOR or $USER) and waits\n"
     "for the daemon's answer: confirmed, or refused with the reason (exit 1). The daemon\n"
     "applies it when the request still misses a volunteer and the volunteer is free, of the\n"
     "request's pool and under their daily cap; the coordinator's choice stands in for skills,\n"
     "languages and distance.\n"},
    {"cancel", 1, "RID",
     "Sends vd.request.cancelled and waits until the request is cancelled; its volunteers go\n"
     "back to their pools. Exit 1 for an unknown, completed or already cancelled request.\n"},
    {"complete", 2, "RID VID",
     "Sends vd.task.completed for a volunteer who forgot to report it, and waits until the\n"
     "daemon applied it. Exit 1 when the volunteer does not hold the request.\n"},
    {"roster", 1, "FILE",
     "Loads volunteers from FILE ('-': stdin) as vd.volunteer.available events: each is\n"
     "available at once at that place. CSV with a header row (volunteer_id, lat, lon, and\n"
     "optionally skills, languages, max_tasks_per_day, team, event_id; lists separated by ';')\n"
     "or JSON lines (the event's data: volunteer_id, location {lat, lon}, skills, languages,\n"
     "...). Other columns (names, phone numbers) are never sent. Every row is checked as the\n"
     "daemon checks its input; a summary names each rejected row's line and field. Shows a\n"
     "progress bar on a terminal. --dry-run checks without sending. Exit 1 when a row was\n"
     "rejected.\n"},
    {"deadletters", 0, "",
     "Lists the most recent dead letters (topic.deadletter): when, where the input was, and\n"
     "why it was rejected. --limit N (default 50).\n"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const struct command *find_command(const char *name) {
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

/* ---- Redis (read only) ---- */

static void redis_connect(struct ctl *c) {
    const struct vd_config *cfg = &c->cfg;
    struct timeval tv = {cfg->redis_connect_timeout_ms / 1000,
                         (cfg->redis_connect_timeout_ms % 1000) * 1000};
    if (cfg->redis_unix_socket[0])
        c->redis = redisConnectUnixWithTimeout(cfg->redis_unix_socket, tv);
    else
        c->redis = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (!c->redis || c->redis->err)
        die(EXIT_UNREACHABLE, "Redis at %s: %s",
            cfg->redis_unix_socket[0] ? cfg->redis_unix_socket : cfg->redis_host,
            c->redis ? c->redis->errstr : "out of memory");
    struct timeval ctv = {cfg->redis_command_timeout_ms / 1000,
                          (cfg->redis_command_timeout_ms % 1000) * 1000};
    redisSetTimeout(c->redis, ctv);
    redisReply *r = NULL;
    if (cfg->redis_password[0]) {
        if (cfg->redis_user[0])
            r = redisCommand(c->redis, "AUTH %s %s", cfg->redis_user, cfg->redis_password);
        else
            r = redisCommand(c->redis, "AUTH %s", cfg->redis_password);
        if (!r || r->type == REDIS_REPLY_ERROR)
            die(EXIT_UNREACHABLE, "Redis AUTH: %s", r ? r->str : c->redis->errstr);
        freeReplyObject(r);
    }
    if (cfg->redis_db) {
        r = redisCommand(c->redis, "SELECT %d", cfg->redis_db);
        if (!r || r->type == REDIS_REPLY_ERROR)
            die(EXIT_UNREACHABLE, "Redis SELECT %d: %s", cfg->redis_db, r ? r->str : c->redis->errstr);
        freeReplyObject(r);
    }
}

/* One command; a lost connection or an error reply (an ACL refusing it) ends the run. */
static redisReply *cmd(struct ctl *c, const char *fmt, ...) {
    if (!c->redis) redis_connect(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c->redis, fmt, ap);
    va_end(ap);
    if (!r) die(EXIT_UNREACHABLE, "Redis: %s", c->redis->errstr);
    if (r->type == REDIS_REPLY_ERROR) die(EXIT_UNREACHABLE, "Redis refused a read: %s", r->str);
    return r;
}

/* Redis' own clock, which every deadline in the records uses. */
static int64_t redis_now_ms(struct ctl *c) {
    redisReply *r = cmd(c, "TIME");
    int64_t ms = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        ms = atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000;
    freeReplyObject(r);
    return ms;
}

/* HGETALL of P..kind..id as a JSON object of strings; NULL when the hash does not exist. */
static json_t *hash(struct ctl *c, const char *kind, const char *id) {
    char key[512];
    snprintf(key, sizeof key, "%s%s%s", c->cfg.redis_key_prefix, kind, id);
    redisReply *r = cmd(c, "HGETALL %s", key);
    json_t *h = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        h = json_object();
        for (size_t i = 0; i + 1 < r->elements; i += 2)
            json_object_set_new(h, r->element[i]->str,
                                json_stringn(r->element[i + 1]->str, r->element[i + 1]->len));
    }
    freeReplyObject(r);
    return h;
}

static const char *field(const json_t *h, const char *name) {
    const char *s = json_string_value(json_object_get(h, name));
    return s ? s : "";
}

/* A comma-joined list as a JSON array (empty entries skipped). */
static json_t *split_list(const char *s) {
    json_t *a = json_array();
    while (s && *s) {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        if (n) json_array_append_new(a, json_stringn(s, n));
        s = comma ? comma + 1 : NULL;
    }
    return a;
}

static int in_list(const json_t *a, const char *x) {
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (strcmp(json_string_value(v), x) == 0) return 1;
    return 0;
}

static json_t *time_string(int64_t ms) {
    char buf[40];
    return json_string(vd_time_format(ms, buf, sizeof buf));
}

/* ---- request ---- */

/* The fields of a fact ("kind|a|b|..."), split in place; returns how many. An unmatched
 * fact's second field is its outcome document, the rest of the line. */
static int fact_fields(char *line, char **f, int max) {
    int n = 0;
    f[n++] = line;
    while (n < max) {
        char *bar = strchr(line, '|');
        if (!bar) break;
        *bar = '\0';
        line = bar + 1;
        f[n++] = line;
        if (n == 2 && strcmp(f[0], "unmatched") == 0) break;
    }
    return n;
}

static json_t *volunteer_entry(json_t *vols, const char *vid) {
    size_t i;
    json_t *v;
    json_array_foreach(vols, i, v) if (strcmp(field(v, "volunteer_id"), vid) == 0) return v;
    v = json_pack("{s:s}", "volunteer_id", vid);
    json_array_append_new(vols, v);
    return v;
}

/* What Redis holds of a request, as one JSON object; NULL when there is no record. */
static json_t *build_request(struct ctl *c, const char *rid) {
    json_t *h = hash(c, "req/", rid);
    if (!h) return NULL;
    json_t *out = json_pack("{s:s, s:s}", "request_id", rid, "state",
                            field(h, "state")[0] ? field(h, "state") : "received");
    json_t *rq = json_loads(field(h, "rq"), 0, NULL);
    json_t *data = json_object_get(rq, "data");
    int needed = atoi(field(h, "needed"));
    if (needed <= 0) needed = 1;
    json_t *held = split_list(field(h, "held")), *offers = split_list(field(h, "offers"));
    json_t *tried = split_list(field(h, "tried")), *done = split_list(field(h, "done"));
    json_object_set_new(out, "volunteers_needed", json_integer(needed));
    json_object_set_new(out, "volunteers_missing",
                        json_integer(needed > (int)json_array_size(held)
                                         ? needed - (int)json_array_size(held) : 0));
    static const char *const copied[] = {"service", "priority", "event_id", "location",
                                         "not_before", "expires_at", "skills", "languages"};
    for (size_t i = 0; data && i < sizeof copied / sizeof copied[0]; i++) {
        json_t *v = json_object_get(data, copied[i]);
        if (v) json_object_set(out, copied[i], v);
    }
    if (!json_object_get(out, "priority")) json_object_set_new(out, "priority", json_string("normal"));
    if (field(h, "need")[0]) json_object_set_new(out, "need", json_integer(atoll(field(h, "need"))));

    json_t *vols = json_array(), *refused = json_array(), *log = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(held, i, v) {
        const char *vid = json_string_value(v);
        json_t *e = volunteer_entry(vols, vid);
        char k[80];
        snprintf(k, sizeof k, "c:%s", vid);
        const char *how = field(h, k);
        json_object_set_new(e, "status", json_string(!in_list(done, vid) ? "confirmed"
                                                     : strcmp(how, "timeout") == 0 ? "released"
                                                                                   : "completed"));
        snprintf(k, sizeof k, "d:%s", vid);
        if (field(h, k)[0]) json_object_set_new(e, "distance_m", json_real(atof(field(h, k))));
        snprintf(k, sizeof k, "t:%s", vid);
        if (field(h, k)[0]) json_object_set_new(e, "confirmed_at", time_string(atoll(field(h, k))));
        snprintf(k, sizeof k, "b:%s", vid);
        if (field(h, k)[0]) json_object_set_new(e, "assigned_by", json_string(field(h, k)));
    }
    json_array_foreach(offers, i, v) {
        const char *vid = json_string_value(v);
        json_t *e = volunteer_entry(vols, vid);
        char k[80], o[200];
        json_object_set_new(e, "status", json_string("offered"));
        snprintf(k, sizeof k, "o:%s", vid);
        snprintf(o, sizeof o, "%s", field(h, k));
        char *bar1 = strchr(o, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (bar1 && bar2) {
            *bar1 = '\0';
            json_object_set_new(e, "offer_id", json_string(o));
            json_object_set_new(e, "answer_by", time_string(atoll(bar2 + 1)));
        }
        snprintf(k, sizeof k, "d:%s", vid);
        if (field(h, k)[0]) json_object_set_new(e, "distance_m", json_real(atof(field(h, k))));
    }
    /* The log: every fact, and from it who declined, timed out or was cancelled. */
    long long seq = atoll(field(h, "seq"));
    for (long long n = 1; n <= seq; n++) {
        char k[32];
        snprintf(k, sizeof k, "f:%lld", n);
        const char *line = field(h, k);
        json_array_append_new(log, json_pack("{s:I, s:s}", "sequence", (json_int_t)n, "fact", line));
        char *buf = strdup(line), *f[8] = {0};
        int nf = fact_fields(buf, f, 8);
        if (strcmp(f[0], "withdrawn") == 0 && nf >= 4 && in_list(tried, f[1])) {
            json_t *e = volunteer_entry(vols, f[1]);
            json_object_set_new(e, "status", json_string(strcmp(f[3], "declined") == 0 ? "declined"
                                                         : strcmp(f[3], "timeout") == 0 ? "timeout"
                                                                                        : "expired"));
        } else if (strcmp(f[0], "cancelled") == 0 && nf >= 2 && f[1][0]) {
            json_object_set_new(volunteer_entry(vols, f[1]), "status", json_string("cancelled"));
        } else if (strcmp(f[0], "refused") == 0 && nf >= 4) {
            json_array_append_new(refused, json_pack("{s:I, s:s, s:s, s:s}", "sequence",
                                                     (json_int_t)n, "volunteer_id", f[1],
                                                     "coordinator_id", f[2], "reason", f[3]));
        }
        free(buf);
    }
    json_object_set_new(out, "volunteers", vols);
    if (json_array_size(refused)) json_object_set_new(out, "refused_assignments", refused);
    else json_decref(refused);
    json_t *unm = json_loads(field(h, "unmatched"), 0, NULL);
    if (unm) json_object_set_new(out, "unmatched", unm);
    json_object_set_new(out, "log", log);
    json_decref(held);
    json_decref(offers);
    json_decref(tried);
    json_decref(done);
    json_decref(rq);
    json_decref(h);
    return out;
}

static const char *jstr(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void print_request(const json_t *r) {
    printf("%s  request %s", jstr(r, "state"), jstr(r, "request_id"));
    if (jstr(r, "service")[0]) printf("  %s", jstr(r, "service"));
    printf("  priority %s", jstr(r, "priority"));
    if (json_object_get(r, "need")) printf("  need %lld", (long long)json_integer_value(json_object_get(r, "need")));
    printf("  %lld needed, %lld missing\n", (long long)json_integer_value(json_object_get(r, "volunteers_needed")),
           (long long)json_integer_value(json_object_get(r, "volunteers_missing")));
    json_t *loc = json_object_get(r, "location");
    if (loc)
        printf("  place       %.5f, %.5f\n", json_number_value(json_object_get(loc, "lat")),
               json_number_value(json_object_get(loc, "lon")));
    if (jstr(r, "event_id")[0]) printf("  event       %s\n", jstr(r, "event_id"));
    if (jstr(r, "not_before")[0]) printf("  not before  %s\n", jstr(r, "not_before"));
    if (jstr(r, "expires_at")[0]) printf("  expires at  %s\n", jstr(r, "expires_at"));
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "volunteers"), i, v) {
        printf("  %-11s %s", jstr(v, "status"), jstr(v, "volunteer_id"));
        if (json_object_get(v, "distance_m"))
            printf("  %.0f m", json_number_value(json_object_get(v, "distance_m")));
        if (jstr(v, "assigned_by")[0]) printf("  assigned by %s", jstr(v, "assigned_by"));
        if (jstr(v, "answer_by")[0]) printf("  answer by %s", jstr(v, "answer_by"));
        if (jstr(v, "confirmed_at")[0]) printf("  since %s", jstr(v, "confirmed_at"));
        printf("\n");
    }
    json_array_foreach(json_object_get(r, "refused_assignments"), i, v)
        printf("  refused     %s (by %s): %s\n", jstr(v, "volunteer_id"), jstr(v, "coordinator_id"),
               jstr(v, "reason"));
    json_t *u = json_object_get(r, "unmatched");
    if (u) {
        char *filtered = json_dumps(json_object_get(u, "filtered"), JSON_COMPACT | JSON_SORT_KEYS);
        printf("  unmatched   %s: radius %lld m, %lld candidates considered, filtered %s\n",
               jstr(u, "reason"), (long long)json_integer_value(json_object_get(u, "radius_m")),
               (long long)json_integer_value(json_object_get(u, "candidates_considered")),
               filtered ? filtered : "{}");
        free(filtered);
    }
    json_array_foreach(json_object_get(r, "log"), i, v)
        printf("  log %3lld    %s\n", (long long)json_integer_value(json_object_get(v, "sequence")),
               jstr(v, "fact"));
}

/* ---- volunteer ---- */

static json_t *build_volunteer(struct ctl *c, const char *vid) {
    json_t *h = hash(c, "vol/", vid);
    if (!h) return NULL;
    const char *pfx = c->cfg.redis_key_prefix;
    int64_t now = redis_now_ms(c);
    const char *task = field(h, "task"), *pool = field(h, "pool");
    const char *state = task[0] ? "busy" : strcmp(field(h, "avail"), "1") == 0 ? "available"
                                                                                : "unavailable";
    json_t *out = json_pack("{s:s, s:s}", "volunteer_id", vid, "state", state);
    json_object_set_new(out, "pooled", json_boolean(pool[0] != '\0'));
    size_t skip = strlen(pfx) + strlen("pool/");
    if (pool[0])
        json_object_set_new(out, "pool", json_string(strlen(pool) > skip && strncmp(pool, pfx, strlen(pfx)) == 0
                                                         ? pool + skip : pool));
    if (field(h, "lat")[0])
        json_object_set_new(out, "location", json_pack("{s:f, s:f}", "lat", atof(field(h, "lat")),
                                                       "lon", atof(field(h, "lon"))));
    json_object_set_new(out, "skills", split_list(field(h, "skills")));
    json_object_set_new(out, "languages", split_list(field(h, "languages")));
    if (field(h, "team")[0]) json_object_set_new(out, "team", json_string(field(h, "team")));
    if (field(h, "event_id")[0]) json_object_set_new(out, "event_id", json_string(field(h, "event_id")));
    int cap = atoi(field(h, "max_tasks"));
    json_object_set_new(out, "max_tasks_per_day", json_integer(cap > 0 ? cap : c->cfg.max_tasks_per_day));
    if (task[0]) json_object_set_new(out, "task", json_string(task));
    char key[512];
    snprintf(key, sizeof key, "%stasks/%s", pfx, vid);
    redisReply *r = cmd(c, "ZRANGEBYSCORE %s (%lld +inf WITHSCORES", key, (long long)(now - DAY_MS));
    json_t *tasks = json_array();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
        json_array_append_new(tasks, json_pack("{s:s, s:o}", "request_id", r->element[i]->str, "at",
                                               time_string(atoll(r->element[i + 1]->str))));
    freeReplyObject(r);
    json_object_set_new(out, "tasks_24h", json_integer((json_int_t)json_array_size(tasks)));
    json_object_set_new(out, "recent_tasks", tasks);
    snprintf(key, sizeof key, "%svols", pfx);
    r = cmd(c, "ZSCORE %s %s", key, vid);
    if (r->type == REDIS_REPLY_STRING) json_object_set_new(out, "last_event", time_string(atoll(r->str)));
    freeReplyObject(r);
    json_decref(h);
    return out;
}

static void print_tags(const char *label, const json_t *a) {
    size_t i;
    json_t *v;
    printf("  %-10s", label);
    if (!json_array_size(a)) printf(" -");
    json_array_foreach(a, i, v) printf("%s%s", i ? ", " : " ", json_string_value(v));
    printf("\n");
}

static void print_volunteer(const json_t *v) {
    printf("%s  volunteer %s", jstr(v, "state"), jstr(v, "volunteer_id"));
    if (jstr(v, "task")[0]) printf("  task %s", jstr(v, "task"));
    printf("  %s\n", json_is_true(json_object_get(v, "pooled")) ? "in the pool" : "not in a pool");
    if (jstr(v, "pool")[0]) printf("  pool       %s\n", jstr(v, "pool"));
    json_t *loc = json_object_get(v, "location");
    if (loc)
        printf("  place      %.5f, %.5f\n", json_number_value(json_object_get(loc, "lat")),
               json_number_value(json_object_get(loc, "lon")));
    print_tags("skills", json_object_get(v, "skills"));
    print_tags("languages", json_object_get(v, "languages"));
    if (jstr(v, "team")[0]) printf("  team       %s\n", jstr(v, "team"));
    if (jstr(v, "event_id")[0]) printf("  event      %s\n", jstr(v, "event_id"));
    printf("  tasks      %lld in the last 24 h, at most %lld\n",
           (long long)json_integer_value(json_object_get(v, "tasks_24h")),
           (long long)json_integer_value(json_object_get(v, "max_tasks_per_day")));
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(v, "recent_tasks"), i, t)
        printf("             %s  %s\n", jstr(t, "at"), jstr(t, "request_id"));
    if (jstr(v, "last_event")[0]) printf("  last event %s\n", jstr(v, "last_event"));
}

/* ---- pools, open ---- */

/* Appends s to buf as a SCAN MATCH pattern that matches s literally. */
static void glob_escape(const char *s, char *buf, size_t cap) {
    size_t o = 0;
    for (; *s && o + 2 < cap; s++) {
        if (strchr("*?[]\\", *s)) buf[o++] = '\\';
        buf[o++] = *s;
    }
    buf[o] = '\0';
}

static long long zcard(struct ctl *c, const char *key) {
    redisReply *r = cmd(c, "ZCARD %s", key);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    return n;
}

static json_t *pool_entry(json_t *pools, const char *name) {
    json_t *p = json_object_get(pools, name);
    if (!p) {
        p = json_pack("{s:s, s:i, s:i, s:{}}", "pool", name, "available", 0, "waiting", 0, "skills");
        json_object_set_new(pools, name, p);
    }
    return p;
}

static int run_pools(struct ctl *c) {
    const char *pfx = c->cfg.redis_key_prefix;
    char pattern[600], esc[400], key[600];
    glob_escape(pfx, esc, sizeof esc);
    snprintf(pattern, sizeof pattern, "%spool/*", esc);
    json_t *pools = json_object();
    char cursor[32] = "0";
    do {
        redisReply *r = cmd(c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) die(EXIT_UNREACHABLE, "Redis: odd SCAN reply");
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            /* city[/...] or ev/<event>[/...]; the rest: "" (the pool), /open, /s/<skill>.
             * IDs hold no '/'. */
            const char *k = r->element[1]->element[i]->str + strlen(pfx) + strlen("pool/");
            const char *rest = strncmp(k, "ev/", 3) == 0 ? strchr(k + 3, '/') : strchr(k, '/');
            if (!rest) rest = k + strlen(k);
            char base[300];
            snprintf(base, sizeof base, "%.*s", (int)(rest - k), k);
            json_t *p = pool_entry(pools, base);
            long long n = zcard(c, r->element[1]->element[i]->str);
            if (strncmp(rest, "/s/", 3) == 0)
                json_object_set_new(json_object_get(p, "skills"), rest + 3, json_integer(n));
            else if (strcmp(rest, "/open") == 0)
                json_object_set_new(p, "waiting", json_integer(n));
            else if (!*rest)
                json_object_set_new(p, "available", json_integer(n));
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    json_t *list = json_array();
    const char *name;
    json_t *p;
    /* The city first, then the events by name. */
    if (json_object_get(pools, "city")) json_array_append(list, json_object_get(pools, "city"));
    json_object_foreach(pools, name, p) if (strcmp(name, "city") != 0) json_array_append(list, p);
    snprintf(key, sizeof key, "%svols", pfx);
    long long vols = zcard(c, key);
    snprintf(key, sizeof key, "%sunstaffed", pfx);
    long long unstaffed = zcard(c, key);
    json_t *doc = json_pack("{s:o, s:I, s:I}", "pools", list, "volunteers", (json_int_t)vols,
                            "unstaffed", (json_int_t)unstaffed);
    json_decref(pools);
    if (c->json) {
        print_json(doc);
        return EXIT_OK;
    }
    printf("%-24s %10s %8s  %s\n", "pool", "available", "waiting", "by skill");
    size_t i;
    json_array_foreach(list, i, p) {
        printf("%-24s %10lld %8lld ", jstr(p, "pool"),
               (long long)json_integer_value(json_object_get(p, "available")),
               (long long)json_integer_value(json_object_get(p, "waiting")));
        const char *sk;
        json_t *n;
        json_object_foreach(json_object_get(p, "skills"), sk, n)
            printf(" %s %lld", sk, (long long)json_integer_value(n));
        printf("\n");
    }
    printf("volunteers with a record: %lld\nrequests to staff (vdispatchctl open): %lld\n", vols, unstaffed);
    json_decref(doc);
    return EXIT_OK;
}

static int run_open(struct ctl *c) {
    const char *pfx = c->cfg.redis_key_prefix;
    char key[600];
    snprintf(key, sizeof key, "%sunstaffed", pfx);
    int64_t now = redis_now_ms(c);
    long long total = zcard(c, key);
    redisReply *r = cmd(c, "ZRANGE %s 0 -1 WITHSCORES", key);
    json_t *list = json_array();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        if ((int)json_array_size(list) >= c->limit) break;
        const char *rid = r->element[i]->str;
        int64_t since = atoll(r->element[i + 1]->str);
        json_t *q = build_request(c, rid);
        if (!q) continue; /* its record expired: the daemon's sweep drops it */
        json_t *u = json_object_get(q, "unmatched");
        json_t *row = json_pack("{s:s, s:s, s:o, s:I, s:O, s:O, s:s, s:s, s:s}", "request_id", rid,
                                "state", jstr(q, "state"), "since", time_string(since),
                                "waiting_s", (json_int_t)((now - since) / 1000), "volunteers_needed",
                                json_object_get(q, "volunteers_needed"), "volunteers_missing",
                                json_object_get(q, "volunteers_missing"), "priority",
                                jstr(q, "priority"), "service", jstr(q, "service"), "reason",
                                u ? jstr(u, "reason") : "");
        if (json_object_get(q, "event_id")) json_object_set(row, "event_id", json_object_get(q, "event_id"));
        json_array_append_new(list, row);
        json_decref(q);
    }
    freeReplyObject(r);
    if (c->json) {
        print_json(json_pack("{s:o, s:I}", "open", list, "total", (json_int_t)total));
        return EXIT_OK;
    }
    printf("%-26s %-8s %-24s %-10s %-7s %-8s %-14s %s\n", "since", "waiting", "request", "state",
           "missing", "priority", "service", "reason");
    size_t i;
    json_t *row;
    json_array_foreach(list, i, row) {
        long long w = json_integer_value(json_object_get(row, "waiting_s"));
        char wait[32];
        if (w < 3600) snprintf(wait, sizeof wait, "%lldm", w / 60);
        else if (w < 86400) snprintf(wait, sizeof wait, "%lldh%02lldm", w / 3600, w % 3600 / 60);
        else snprintf(wait, sizeof wait, "%lldd%02lldh", w / 86400, w % 86400 / 3600);
        printf("%-26s %-8s %-24s %-10s %3lld/%-3lld %-8s %-14s %s\n", jstr(row, "since"), wait,
               jstr(row, "request_id"), jstr(row, "state"),
               (long long)json_integer_value(json_object_get(row, "volunteers_missing")),
               (long long)json_integer_value(json_object_get(row, "volunteers_needed")),
               jstr(row, "priority"), jstr(row, "service")[0] ? jstr(row, "service") : "-",
               jstr(row, "reason"));
    }
    printf("%lld request%s to staff%s\n", total, total == 1 ? "" : "s",
           (long long)json_array_size(list) < total ? " (--limit shows more)" : "");
    json_decref(list);
    return EXIT_OK;
}

/* ---- Kafka: actions are input events ---- */

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    struct ctl *c = opaque;
    if (m->err) {
        c->failed++;
        snprintf(c->kafka_err, sizeof c->kafka_err, "%s", rd_kafka_err2str(m->err));
    } else {
        c->delivered++;
    }
}

/* librdkafka's own log lines would bury the answer: its errors are kept for the message that
 * ends the run instead. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    struct ctl *c = opaque;
    snprintf(c->kafka_err, sizeof c->kafka_err, "%s", reason);
}

static rd_kafka_conf_t *kafka_conf(struct ctl *c, const struct vd_config_props *props,
                                   const char *prefix) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    if (rd_kafka_conf_set(conf, "bootstrap.servers", c->cfg.kafka_brokers, err, sizeof err) ||
        rd_kafka_conf_set(conf, "client.id", "vdispatchctl", err, sizeof err))
        die(EXIT_USAGE, "kafka.brokers: %s", err);
    for (size_t i = 0; i < props->n; i++)
        if (rd_kafka_conf_set(conf, props->v[i].name, props->v[i].value, err, sizeof err))
            die(EXIT_USAGE, "%s: %s%s: %s", props->v[i].origin, prefix, props->v[i].name, err);
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    return conf;
}

/* A message not acknowledged within --wait fails (a roster's, within two minutes at least:
 * thousands may queue behind it). */
static void producer_open(struct ctl *c) {
    rd_kafka_conf_t *conf = kafka_conf(c, &c->cfg.producer_props, "kafka.producer.");
    char err[512], timeout[32];
    snprintf(timeout, sizeof timeout, "%d", (c->bulk && c->wait_s < 120 ? 120 : c->wait_s) * 1000);
    if (rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err) ||
        rd_kafka_conf_set(conf, "acks", "all", err, sizeof err) ||
        rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) ||
        rd_kafka_conf_set(conf, "message.timeout.ms", timeout, err, sizeof err))
        die(EXIT_USAGE, "kafka producer: %s", err);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    c->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!c->producer) die(EXIT_USAGE, "kafka producer: %s", err);
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Encodes an input event and checks it as the daemon will (a row of a roster may be bad);
 * returns the JSON (free()) or NULL with the reason in err. data is stolen. */
static char *make_event(struct ctl *c, const char *type, enum vd_topic_kind topic, json_t *data,
                        char *err, size_t errlen) {
    char id[128];
    snprintf(id, sizeof id, "vdispatchctl/%lld/%d/%u", (long long)wall_ms(), (int)getpid(), ++c->seq);
    char *s = vd_event_encode_from(SOURCE, type, id, wall_ms(), 0, data);
    if (!s) {
        snprintf(err, errlen, "the row cannot be encoded as JSON");
        return NULL;
    }
    struct vd_event *ev = malloc(sizeof *ev);
    if (!ev) die(EXIT_UNREACHABLE, "out of memory");
    int bad = vd_event_decode(s, strlen(s), topic, ev, err, errlen);
    free(ev);
    if (bad) {
        free(s);
        return NULL;
    }
    return s;
}

static const char *topic_name(struct ctl *c, enum vd_topic_kind t) {
    return t == VD_TOPIC_REQUESTS ? c->cfg.topic_requests
           : t == VD_TOPIC_VOLUNTEERS ? c->cfg.topic_volunteers : c->cfg.topic_responses;
}

/* Queues one event keyed as the contract says; polls while librdkafka's queue is full. */
static void produce(struct ctl *c, enum vd_topic_kind topic, const char *key, char *value) {
    if (!c->producer) producer_open(c);
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            c->producer, RD_KAFKA_V_TOPIC(topic_name(c, topic)), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(value, strlen(value)),
            RD_KAFKA_V_HEADER("content-type", "application/cloudevents+json; charset=UTF-8", -1),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) die(EXIT_UNREACHABLE, "Kafka: %s", rd_kafka_err2str(e));
        rd_kafka_poll(c->producer, 50);
    }
    rd_kafka_poll(c->producer, 0);
}

/* Waits until Kafka acknowledged everything queued; exit 3 when it did not. */
static void flush(struct ctl *c) {
    if (!c->producer) return;
    rd_kafka_flush(c->producer, (c->bulk && c->wait_s < 120 ? 120 : c->wait_s) * 1000 + 1000);
    if (rd_kafka_outq_len(c->producer) > 0 || c->failed)
        die(EXIT_UNREACHABLE, "Kafka at %s did not take the event%s: %s", c->cfg.kafka_brokers,
            c->failed + rd_kafka_outq_len(c->producer) > 1 ? "s" : "",
            c->kafka_err[0] ? c->kafka_err : "no acknowledgement in time");
}

static void send_one(struct ctl *c, const char *type, enum vd_topic_kind topic, const char *key,
                     json_t *data) {
    char err[512];
    char *s = make_event(c, type, topic, data, err, sizeof err);
    if (!s) die(EXIT_USAGE, "%s", err);
    produce(c, topic, key, s);
    free(s);
    flush(c);
}

static void nap(void) {
    struct timespec ts = {0, 100 * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- assign, cancel, complete ---- */

static long long hash_int(struct ctl *c, const char *kind, const char *id, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s%s", c->cfg.redis_key_prefix, kind, id);
    redisReply *r = cmd(c, "HGET %s %s", key, name);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    freeReplyObject(r);
    return v;
}

static char *hash_str(struct ctl *c, const char *kind, const char *id, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s%s", c->cfg.redis_key_prefix, kind, id);
    redisReply *r = cmd(c, "HGET %s %s", key, name);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static int answer(struct ctl *c, int code, json_t *doc, const char *fmt, ...) {
    if (c->json) {
        print_json(doc);
    } else {
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        json_decref(doc);
    }
    return code;
}

static int not_found(struct ctl *c, const char *what, const char *id) {
    return answer(c, EXIT_REFUSED, json_pack("{s:s, s:s}", "result", "not_found", what, id),
                  "unknown %s %s", strcmp(what, "request_id") == 0 ? "request" : "volunteer", id);
}

static int timed_out(struct ctl *c, const char *what) {
    fprintf(stderr, "vdispatchctl: sent, but the daemon has not applied the %s within %d s: is "
                    "vdispatchd running and consuming? (--wait SECONDS waits longer)\n",
            what, c->wait_s);
    return EXIT_UNREACHABLE;
}

static int run_assign(struct ctl *c, const char *rid, const char *vid) {
    char *state = hash_str(c, "req/", rid, "state");
    if (!state) return not_found(c, "request_id", rid);
    free(state);
    long long seq0 = hash_int(c, "req/", rid, "seq");
    send_one(c, "vd.request.assign", VD_TOPIC_REQUESTS, rid,
             json_pack("{s:s, s:s, s:s}", "request_id", rid, "volunteer_id", vid, "coordinator_id",
                       c->coordinator));
    /* The daemon's answer is a fact of the request's log: confirmed|vid|...|by or
     * refused|vid|by|why. */
    for (int t = 0; t < c->wait_s * 10; t++, nap()) {
        long long seq = hash_int(c, "req/", rid, "seq");
        for (long long n = seq0 + 1; n <= seq; n++) {
            char name[32], *f[8] = {0};
            snprintf(name, sizeof name, "f:%lld", n);
            char *line = hash_str(c, "req/", rid, name);
            if (!line) continue;
            int nf = fact_fields(line, f, 8);
            int code = -1;
            if (strcmp(f[0], "confirmed") == 0 && nf >= 6 && strcmp(f[1], vid) == 0 &&
                strcmp(f[5], c->coordinator) == 0) {
                double dist = atof(f[4]);
                code = answer(c, EXIT_OK,
                              json_pack("{s:s, s:s, s:s, s:s, s:f, s:s, s:I}", "result", "confirmed",
                                        "request_id", rid, "volunteer_id", vid, "assigned_by",
                                        c->coordinator, "distance_m", dist, "offer_id", f[2],
                                        "sequence", (json_int_t)n),
                              "confirmed: volunteer %s assigned to request %s by %s (%.0f m away)",
                              vid, rid, c->coordinator, dist);
            } else if (strcmp(f[0], "refused") == 0 && nf >= 4 && strcmp(f[1], vid) == 0 &&
                       strcmp(f[2], c->coordinator) == 0) {
                code = answer(c, EXIT_REFUSED,
                              json_pack("{s:s, s:s, s:s, s:s, s:I}", "result", "refused",
                                        "request_id", rid, "volunteer_id", vid, "reason", f[3],
                                        "sequence", (json_int_t)n),
                              "refused: %s", f[3]);
            }
            free(line);
            if (code >= 0) return code;
        }
        seq0 = seq;
    }
    return timed_out(c, "assignment");
}

static int run_cancel(struct ctl *c, const char *rid) {
    char *state = hash_str(c, "req/", rid, "state");
    if (!state) return not_found(c, "request_id", rid);
    if (strcmp(state, "completed") == 0 || strcmp(state, "cancelled") == 0) {
        int code = answer(c, EXIT_REFUSED,
                          json_pack("{s:s, s:s, s:s}", "result", "refused", "request_id", rid,
                                    "reason", state),
                          "refused: request %s is already %s", rid, state);
        free(state);
        return code;
    }
    free(state);
    send_one(c, "vd.request.cancelled", VD_TOPIC_REQUESTS, rid, json_pack("{s:s}", "request_id", rid));
    for (int t = 0; t < c->wait_s * 10; t++, nap()) {
        state = hash_str(c, "req/", rid, "state");
        int done = state && strcmp(state, "cancelled") == 0;
        free(state);
        if (done)
            return answer(c, EXIT_OK, json_pack("{s:s, s:s}", "result", "cancelled", "request_id", rid),
                          "cancelled: request %s; the volunteers it held are free again", rid);
    }
    return timed_out(c, "cancel");
}

static int run_complete(struct ctl *c, const char *rid, const char *vid) {
    json_t *q = build_request(c, rid);
    if (!q) return not_found(c, "request_id", rid);
    const char *status = "";
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(q, "volunteers"), i, v)
        if (strcmp(jstr(v, "volunteer_id"), vid) == 0) status = jstr(v, "status");
    if (strcmp(status, "confirmed") != 0) {
        char why[200];
        snprintf(why, sizeof why, "volunteer %s does not hold request %s (%s)", vid, rid,
                 status[0] ? status : "never confirmed for it");
        json_decref(q);
        return answer(c, EXIT_REFUSED,
                      json_pack("{s:s, s:s, s:s, s:s}", "result", "refused", "request_id", rid,
                                "volunteer_id", vid, "reason", why),
                      "refused: %s", why);
    }
    json_decref(q);
    send_one(c, "vd.task.completed", VD_TOPIC_RESPONSES, rid,
             json_pack("{s:s, s:s}", "request_id", rid, "volunteer_id", vid));
    char name[80];
    snprintf(name, sizeof name, "c:%s", vid);
    for (int t = 0; t < c->wait_s * 10; t++, nap()) {
        char *how = hash_str(c, "req/", rid, name);
        if (how) {
            int all = strcmp(how, "all") == 0;
            free(how);
            return answer(c, EXIT_OK,
                          json_pack("{s:s, s:s, s:s, s:b}", "result", "completed", "request_id", rid,
                                    "volunteer_id", vid, "all_done", all),
                          "completed: volunteer %s is done with request %s%s", vid, rid,
                          all ? " (every volunteer of it is done)" : "");
        }
    }
    return timed_out(c, "completion");
}

/* ---- roster ---- */

enum col { COL_VID, COL_LAT, COL_LON, COL_SKILLS, COL_LANGS, COL_CAP, COL_TEAM, COL_EVENT, NCOLS };
static const char *const col_names[NCOLS] = {"volunteer_id", "lat", "lon", "skills",
                                             "languages", "max_tasks_per_day", "team", "event_id"};

struct roster {
    struct ctl *c;
    long line;          /* the line the current row started on */
    long cur_line;      /* the line being parsed */
    int header_done;
    int col_of[64];     /* CSV column -> enum col, or -1 */
    int ncols_file;
    int field;          /* current CSV field */
    char *val[NCOLS];   /* current row's values */
    long rows, sent;
    json_t *rejected;   /* [{line, error}] */
    long long bytes, total_bytes;
    int last_pct;
    int tty;
};

/* "a;b c" or "a,b" -> ["a","b"] */
static json_t *tag_list(const char *s) {
    json_t *a = json_array();
    char *copy = strdup(s ? s : ""), *save = NULL;
    for (char *t = strtok_r(copy, ";, |", &save); t; t = strtok_r(NULL, ";, |", &save))
        json_array_append_new(a, json_string(t));
    free(copy);
    return a;
}

static void reject(struct roster *r, const char *err) {
    json_array_append_new(r->rejected, json_pack("{s:I, s:s}", "line", (json_int_t)r->line, "error", err));
}

/* Checks and sends one volunteer (data is stolen). */
static void roster_row(struct roster *r, json_t *data) {
    char err[512], vid[VD_ID_MAX + 1] = "";
    r->rows++;
    /* The key, copied: make_event() takes data over. A bad ID is rejected there. */
    const char *v = json_string_value(json_object_get(data, "volunteer_id"));
    if (v) snprintf(vid, sizeof vid, "%s", v);
    char *s = make_event(r->c, "vd.volunteer.available", VD_TOPIC_VOLUNTEERS, data, err, sizeof err);
    if (!s) {
        reject(r, err);
        return;
    }
    if (!r->c->dry_run) produce(r->c, VD_TOPIC_VOLUNTEERS, vid, s);
    r->sent++;
    free(s);
}

static void progress(struct roster *r, int final) {
    if (r->total_bytes <= 0) return;
    int pct = (int)(r->bytes * 100 / r->total_bytes);
    if (pct == r->last_pct && !final) return;
    r->last_pct = pct;
    if (r->tty) {
        char bar[41];
        int n = pct * 40 / 100;
        memset(bar, '#', (size_t)n);
        memset(bar + n, '.', (size_t)(40 - n));
        bar[40] = '\0';
        fprintf(stderr, "\r[%s] %3d%%  %ld rows, %ld rejected", bar, pct, r->rows,
                (long)json_array_size(r->rejected));
        if (final) fputc('\n', stderr);
    } else if (pct % 10 == 0 || final) {
        fprintf(stderr, "roster: %d%%, %ld rows, %ld rejected\n", pct, r->rows,
                (long)json_array_size(r->rejected));
    }
}

/* Number parsing for CSV cells: a cell that is not a number is passed on as a string, so the
 * daemon's own check names the field and what is wrong with it. */
static json_t *number_or_string(const char *s) {
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (*s && !*end && errno == 0) return json_real(d);
    return json_string(s);
}

static void csv_field(void *s, size_t len, void *opaque) {
    struct roster *r = opaque;
    if (r->field == 0) r->line = r->cur_line;
    char *v = strndup(s ? s : "", len);
    if (!r->header_done) {
        int k = -1;
        for (int i = 0; i < NCOLS; i++)
            if (strcasecmp(v, col_names[i]) == 0) k = i;
        if (r->field < 64) r->col_of[r->field] = k;
        free(v);
    } else {
        int k = r->field < 64 && r->field < r->ncols_file ? r->col_of[r->field] : -1;
        if (k >= 0) {
            free(r->val[k]);
            r->val[k] = v;
        } else {
            free(v); /* names, phone numbers: never sent */
        }
    }
    r->field++;
}

static void csv_row(int term, void *opaque) {
    struct roster *r = opaque;
    if (!r->header_done) {
        r->header_done = 1;
        r->ncols_file = r->field;
        for (int want = COL_VID; want <= COL_LON; want++) {
            int found = 0;
            for (int i = 0; i < r->field && i < 64; i++) found |= r->col_of[i] == want;
            if (!found)
                die(EXIT_USAGE, "roster: the header (line 1) has no column %s; the columns are %s, "
                                "lat, lon and optionally skills, languages, max_tasks_per_day, team, event_id",
                    col_names[want], col_names[COL_VID]);
        }
    } else if (r->field > 1 || (r->val[COL_VID] && r->val[COL_VID][0])) {
        json_t *data = json_object();
        json_object_set_new(data, "volunteer_id", json_string(r->val[COL_VID] ? r->val[COL_VID] : ""));
        json_object_set_new(data, "location",
                            json_pack("{s:o, s:o}", "lat", number_or_string(r->val[COL_LAT] ? r->val[COL_LAT] : ""),
                                      "lon", number_or_string(r->val[COL_LON] ? r->val[COL_LON] : "")));
        json_object_set_new(data, "skills", tag_list(r->val[COL_SKILLS]));
        json_object_set_new(data, "languages", tag_list(r->val[COL_LANGS]));
        if (r->val[COL_CAP] && r->val[COL_CAP][0]) {
            json_t *n = number_or_string(r->val[COL_CAP]);
            if (json_is_real(n) && json_real_value(n) == (double)(long long)json_real_value(n)) {
                json_t *i = json_integer((json_int_t)json_real_value(n));
                json_decref(n);
                n = i;
            }
            json_object_set_new(data, "max_tasks_per_day", n);
        }
        if (r->val[COL_TEAM] && r->val[COL_TEAM][0]) json_object_set_new(data, "team", json_string(r->val[COL_TEAM]));
        if (r->val[COL_EVENT] && r->val[COL_EVENT][0])
            json_object_set_new(data, "event_id", json_string(r->val[COL_EVENT]));
        roster_row(r, data);
    }
    for (int i = 0; i < NCOLS; i++) {
        free(r->val[i]);
        r->val[i] = NULL;
    }
    r->field = 0;
}

static int run_roster(struct ctl *c, const char *path) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) die(EXIT_USAGE, "roster: %s: %s", path, strerror(errno));
    struct stat st;
    struct roster r = {.c = c, .line = 1, .rejected = json_array(), .last_pct = -1,
                       .tty = isatty(2)};
    c->bulk = 1;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode)) r.total_bytes = st.st_size;
    for (int i = 0; i < 64; i++) r.col_of[i] = -1;
    /* JSON lines when the first character that is not a space is '{'. */
    long lineno = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF && (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n')) {
        r.bytes++;
        lineno += ch == '\n';
    }
    if (ch != EOF) ungetc(ch, f);
    int jsonl = ch == '{';
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    struct csv_parser p;
    if (!jsonl && csv_init(&p, CSV_APPEND_NULL) != 0) die(EXIT_UNREACHABLE, "out of memory");
    while ((n = getline(&buf, &cap, f)) > 0) {
        lineno++;
        r.bytes += n;
        if (jsonl) {
            r.line = lineno;
            const char *s = buf;
            while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
            if (*s) {
                json_error_t je;
                json_t *data = json_loadb(buf, (size_t)n, JSON_REJECT_DUPLICATES, &je);
                if (!json_is_object(data)) {
                    char err[300];
                    snprintf(err, sizeof err, "not a JSON object: %s", data ? "another JSON value" : je.text);
                    r.rows++;
                    reject(&r, err);
                    json_decref(data);
                } else {
                    /* lat/lon at the top level are taken as the location. */
                    if (!json_object_get(data, "location") && json_object_get(data, "lat"))
                        json_object_set_new(data, "location",
                                            json_pack("{s:O, s:O}", "lat", json_object_get(data, "lat"),
                                                      "lon", json_object_get(data, "lon") ? json_object_get(data, "lon") : json_null()));
                    json_object_del(data, "lat");
                    json_object_del(data, "lon");
                    if (!json_object_get(data, "skills")) json_object_set_new(data, "skills", json_array());
                    if (!json_object_get(data, "languages")) json_object_set_new(data, "languages", json_array());
                    /* Only what the event carries: anything else in the line stays here. */
                    json_t *keep = json_object();
                    static const char *const fields[] = {"volunteer_id", "location", "skills", "languages",
                                                         "max_tasks_per_day", "team", "event_id"};
                    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
                        if (json_object_get(data, fields[i]))
                            json_object_set(keep, fields[i], json_object_get(data, fields[i]));
                    json_decref(data);
                    roster_row(&r, keep);
                }
            }
        } else {
            r.cur_line = lineno;
            if (csv_parse(&p, buf, (size_t)n, csv_field, csv_row, &r) != (size_t)n)
                die(EXIT_USAGE, "roster: %s line %ld: %s", path, lineno, csv_strerror(csv_error(&p)));
        }
        if (c->producer) rd_kafka_poll(c->producer, 0);
        progress(&r, 0);
    }
    if (!jsonl) {
        csv_fini(&p, csv_field, csv_row, &r);
        csv_free(&p);
        if (!r.header_done) die(EXIT_USAGE, "roster: %s is empty", path);
    }
    free(buf);
    if (f != stdin) fclose(f);
    progress(&r, 1);
    if (!c->dry_run) flush(c);
    size_t nrej = json_array_size(r.rejected);
    int code = nrej ? EXIT_REFUSED : EXIT_OK;
    if (c->json) {
        print_json(json_pack("{s:I, s:I, s:b, s:o}", "rows", (json_int_t)r.rows, "sent",
                             (json_int_t)(c->dry_run ? 0 : r.sent), "dry_run", c->dry_run,
                             "rejected", r.rejected));
        return code;
    }
    printf("roster %s: %ld rows, %ld %s, %zu rejected\n", path, r.rows, r.sent,
           c->dry_run ? "valid (dry run: nothing sent)" : "sent", nrej);
    size_t i;
    json_t *v;
    json_array_foreach(r.rejected, i, v) {
        if (i == REJECTS_SHOWN) {
            printf("  ... and %zu more (--json lists them all)\n", nrej - REJECTS_SHOWN);
            break;
        }
        printf("  line %lld: %s\n", (long long)json_integer_value(json_object_get(v, "line")),
               jstr(v, "error"));
    }
    json_decref(r.rejected);
    return code;
}

/* ---- dead letters ---- */

static int cmp_time(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int c = strcmp(jstr(x, "time"), jstr(y, "time"));
    return c ? c : strcmp(jstr(x, "id"), jstr(y, "id"));
}

static int run_deadletters(struct ctl *c) {
    rd_kafka_conf_t *conf = kafka_conf(c, &c->cfg.consumer_props, "kafka.consumer.");
    char err[512];
    if (rd_kafka_conf_set(conf, "group.id", "vdispatchctl", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err))
        die(EXIT_USAGE, "kafka consumer: %s", err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) die(EXIT_USAGE, "kafka consumer: %s", err);
    const char *topic = c->cfg.topic_deadletter;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, c->wait_s * 1000);
    if (e)
        die(EXIT_UNREACHABLE, "Kafka at %s: %s", c->cfg.kafka_brokers,
            c->kafka_err[0] ? c->kafka_err : rd_kafka_err2str(e));
    if (md->topic_cnt < 1 || md->topics[0].err) {
        rd_kafka_resp_err_t te = md->topic_cnt ? md->topics[0].err : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        die(EXIT_UNREACHABLE, "Kafka: topic %s: %s", topic, rd_kafka_err2str(te));
    }
    int nparts = md->topics[0].partition_cnt;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(nparts);
    int waiting = 0;
    for (int i = 0; i < nparts; i++) {
        int32_t pid = md->topics[0].partitions[i].id;
        int64_t lo = 0, hi = 0;
        e = rd_kafka_query_watermark_offsets(rk, topic, pid, &lo, &hi, c->wait_s * 1000);
        if (e) die(EXIT_UNREACHABLE, "Kafka: %s[%d]: %s", topic, pid, rd_kafka_err2str(e));
        if (hi <= lo) continue;
        int64_t from = hi - c->limit > lo ? hi - c->limit : lo;
        rd_kafka_topic_partition_list_add(parts, topic, pid)->offset = from;
        waiting++;
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    json_t *all = json_array();
    if (waiting) {
        e = rd_kafka_assign(rk, parts);
        if (e) die(EXIT_UNREACHABLE, "Kafka: %s", rd_kafka_err2str(e));
        int64_t deadline = wall_ms() + (int64_t)c->wait_s * 1000;
        while (waiting > 0 && wall_ms() < deadline) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
            if (!m) continue;
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                waiting--;
            } else if (m->err) {
                die(EXIT_UNREACHABLE, "Kafka: %s", rd_kafka_message_errstr(m));
            } else {
                json_t *ev = json_loadb(m->payload, m->len, 0, NULL);
                if (json_is_object(ev)) json_array_append(all, ev);
                json_decref(ev);
            }
            rd_kafka_message_destroy(m);
        }
    }
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    /* The newest `limit` over every partition, oldest first. */
    size_t n = json_array_size(all);
    json_t **v = calloc(n ? n : 1, sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = json_array_get(all, i);
    qsort(v, n, sizeof *v, cmp_time);
    size_t first = n > (size_t)c->limit ? n - (size_t)c->limit : 0;
    json_t *list = json_array();
    for (size_t i = first; i < n; i++) {
        json_t *d = json_object_get(v[i], "data");
        json_t *row = json_pack("{s:s, s:s, s:s, s:O, s:O, s:s}", "id", jstr(v[i], "id"), "time",
                                jstr(v[i], "time"), "topic", jstr(d, "topic"), "partition",
                                json_object_get(d, "partition") ? json_object_get(d, "partition") : json_null(),
                                "offset", json_object_get(d, "offset") ? json_object_get(d, "offset") : json_null(),
                                "error", jstr(d, "error"));
        json_array_append_new(list, row);
    }
    free(v);
    json_decref(all);
    if (c->json) {
        print_json(json_pack("{s:o}", "deadletters", list));
        return EXIT_OK;
    }
    size_t i;
    json_t *row;
    json_array_foreach(list, i, row)
        printf("%s  %s[%lld]@%lld  %s\n", jstr(row, "time"), jstr(row, "topic"),
               (long long)json_integer_value(json_object_get(row, "partition")),
               (long long)json_integer_value(json_object_get(row, "offset")), jstr(row, "error"));
    printf("%zu dead letter%s\n", json_array_size(list), json_array_size(list) == 1 ? "" : "s");
    json_decref(list);
    return EXIT_OK;
}

/* ---- main ---- */

static void default_coordinator(struct ctl *c) {
    const char *who = getenv("VD_COORDINATOR");
    if (!who || !*who) who = getenv("USER");
    snprintf(c->coordinator, sizeof c->coordinator, "%s", who && vd_id_valid(who) ? who : "vdispatchctl");
}

static int positive(const char *opt, const char *s, int max) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 1 || v > max) die(EXIT_USAGE, "%s: '%s' is not a number from 1 to %d", opt, s, max);
    return (int)v;
}

int main(int argc, char **argv) {
    struct ctl c = {.wait_s = 15, .limit = 50};
    const char *config = NULL;
    int help = 0;
    enum { O_SET = 256, O_JSON, O_WAIT, O_COORD, O_LIMIT, O_DRY, O_VERSION };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"set", required_argument, NULL, O_SET},
        {"json", no_argument, NULL, O_JSON},      {"wait", required_argument, NULL, O_WAIT},
        {"coordinator", required_argument, NULL, O_COORD},
        {"limit", required_argument, NULL, O_LIMIT}, {"dry-run", no_argument, NULL, O_DRY},
        {"help", no_argument, NULL, 'h'},         {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0}};
    char err[1024];
    default_coordinator(&c);
    /* --set is applied after the file: remember them. */
    const char **sets = calloc((size_t)argc, sizeof *sets);
    int nsets = 0, o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case O_SET: sets[nsets++] = optarg; break;
        case O_JSON: c.json = 1; break;
        case O_WAIT: c.wait_s = positive("--wait", optarg, 3600); break;
        case O_COORD:
            if (!vd_id_valid(optarg))
                die(EXIT_USAGE, "--coordinator: '%s' is not an ID (1-64 of A-Z a-z 0-9 . _ : -)", optarg);
            snprintf(c.coordinator, sizeof c.coordinator, "%s", optarg);
            break;
        case O_LIMIT: c.limit = positive("--limit", optarg, 100000); break;
        case O_DRY: c.dry_run = 1; break;
        case 'h': help = 1; break;
        case O_VERSION:
            printf("vdispatchctl %s\n", VD_VERSION);
            free(sets);
            return EXIT_OK;
        default:
            die(EXIT_USAGE, "unknown option %s (vdispatchctl --help)", argv[optind - 1]);
        }
    }
    const char *name = optind < argc ? argv[optind] : NULL;
    const struct command *cm = name ? find_command(name) : NULL;
    if (help) {
        if (cm) printf("usage: vdispatchctl -c FILE [--json] %s %s\n\n%s", cm->name, cm->args, cm->help);
        else fputs(usage_text, stdout);
        free(sets);
        return EXIT_OK;
    }
    if (!name) {
        fputs(usage_text, stderr);
        free(sets);
        return EXIT_USAGE;
    }
    if (!cm) die(EXIT_USAGE, "unknown command '%s' (vdispatchctl --help lists them)", name);
    if (argc - optind - 1 != cm->nargs)
        die(EXIT_USAGE, "usage: vdispatchctl -c FILE %s %s (vdispatchctl %s --help)", cm->name, cm->args,
            cm->name);
    if (!config) die(EXIT_USAGE, "-c FILE is required: the daemon's config file");
    if (vd_config_init(&c.cfg) < 0) die(EXIT_UNREACHABLE, "out of memory");
    if (vd_config_load_file(&c.cfg, config, err, sizeof err) < 0) die(EXIT_USAGE, "%s", err);
    for (int i = 0; i < nsets; i++)
        if (vd_config_set(&c.cfg, sets[i], err, sizeof err) < 0) die(EXIT_USAGE, "--set %s", err);
    if (vd_config_read_secrets(&c.cfg, err, sizeof err) < 0 || vd_config_validate(&c.cfg, err, sizeof err) < 0)
        die(EXIT_USAGE, "%s", err);
    free(sets);
    char **a = argv + optind + 1;
    for (int i = 0; i < cm->nargs && strcmp(cm->name, "roster") != 0; i++)
        if (!vd_id_valid(a[i])) die(EXIT_USAGE, "%s: '%s' is not an ID (1-64 of A-Z a-z 0-9 . _ : -)", cm->args, a[i]);

    int code = EXIT_OK;
    if (strcmp(cm->name, "request") == 0 || strcmp(cm->name, "volunteer") == 0) {
        int req = cm->name[0] == 'r';
        json_t *doc = req ? build_request(&c, a[0]) : build_volunteer(&c, a[0]);
        if (!doc) {
            code = not_found(&c, req ? "request_id" : "volunteer_id", a[0]);
        } else if (c.json) {
            print_json(doc);
        } else {
            if (req) print_request(doc);
            else print_volunteer(doc);
            json_decref(doc);
        }
    } else if (strcmp(cm->name, "pools") == 0) {
        code = run_pools(&c);
    } else if (strcmp(cm->name, "open") == 0) {
        code = run_open(&c);
    } else if (strcmp(cm->name, "assign") == 0) {
        code = run_assign(&c, a[0], a[1]);
    } else if (strcmp(cm->name, "cancel") == 0) {
        code = run_cancel(&c, a[0]);
    } else if (strcmp(cm->name, "complete") == 0) {
        code = run_complete(&c, a[0], a[1]);
    } else if (strcmp(cm->name, "roster") == 0) {
        code = run_roster(&c, a[0]);
    } else {
        code = run_deadletters(&c);
    }
    if (c.producer) rd_kafka_destroy(c.producer);
    if (c.redis) redisFree(c.redis);
    vd_config_free(&c.cfg);
    fflush(stdout);
    return code;
}
